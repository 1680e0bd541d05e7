"""Presentation of the readers' answers: a self-contained HTML page for a two-run comparison.

```python
from contexta_async.readers import Workspace
from contexta_async.report import render_html_report

comparison = await Workspace(".contexta").compare("helpful-only", "grounded")
page = render_html_report(comparison)  # no script, no network asset
```

``report_sections`` gives the page's body for a page of another's (the live view's), and
``STYLE`` its stylesheet. The readers compute; this package only renders what they return.
``format_number``, ``percent`` and ``run_facts`` are the notebook display's formatting (the
readers' ``_repr_html_``, rendered here), shared with the page and the command line.
"""

from ._html import STYLE, render_html_report, report_sections
from ._notebook import number as format_number
from ._notebook import percent, run_facts

__all__ = [
    "STYLE",
    "format_number",
    "percent",
    "render_html_report",
    "report_sections",
    "run_facts",
]
