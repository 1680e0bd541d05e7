"""Presentation of the readers' answers: a self-contained HTML page for a two-run comparison.

```python
from contexta_async.readers import Workspace
from contexta_async.report import render_html_report

comparison = await Workspace(".contexta").compare("helpful-only", "grounded")
page = render_html_report(comparison)  # no script, no network asset
```

``report_sections`` gives the page's body for a page of another's (the live view's), and
``STYLE`` its stylesheet. The readers compute; this package only renders what they return.
``format_number``, ``percent`` and ``run_facts`` are the readers' own notebook formatting
(``_repr_html_``), shared with the report, the view and the command line.
"""

from ..readers._display import number as format_number
from ..readers._display import percent, run_facts
from ._html import STYLE, render_html_report, report_sections

__all__ = [
    "STYLE",
    "format_number",
    "percent",
    "render_html_report",
    "report_sections",
    "run_facts",
]
