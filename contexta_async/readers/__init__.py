"""Async readers: list runs, stream their records, compare runs with paired statistics.

```python
from contexta_async.readers import Workspace

ws = Workspace(".contexta")
runs = await ws.list_runs(status="completed")
comparison = await ws.compare("helpful-only", "grounded")
best = await ws.best_run(["helpful-only", "grounded"], "pass.rate")
```
"""

from typing import TYPE_CHECKING

from ..stats._bootstrap import (
    SADDLEPOINT_MIN_PAIRS,
    BootstrapInterval,
    BootstrapMethod,
    mcnemar_exact,
    paired_bootstrap_ci,
)
from ..stats._inference import items_needed, minimum_detectable_effect
from ._direction import MINIMIZE_WORDS, infer_direction
from ._errors import (
    AmbiguousMetricError,
    AmbiguousRunError,
    EmptyWorkspaceError,
    MetricNotFoundError,
    ReaderError,
    UnknownRunError,
    UnreadableFileError,
    WorkspaceNotFoundError,
)
from ._model import (
    Alignment,
    ArtifactChange,
    BestRun,
    Direction,
    LineProblem,
    MetricDelta,
    MultiRunComparison,
    MultiRunRow,
    PairedResult,
    PairedSample,
    RankedRun,
    ReadReport,
    RecordCounts,
    RecordKind,
    RecordRow,
    RunComparison,
    RunStatus,
    RunSummary,
    Scope,
)
from ._workspace import Workspace, resolve_run_ref

if TYPE_CHECKING:
    from ..report import render_html_report

__all__ = [
    "MINIMIZE_WORDS",
    "SADDLEPOINT_MIN_PAIRS",
    "Alignment",
    "AmbiguousMetricError",
    "AmbiguousRunError",
    "ArtifactChange",
    "BestRun",
    "BootstrapInterval",
    "BootstrapMethod",
    "Direction",
    "EmptyWorkspaceError",
    "LineProblem",
    "MetricDelta",
    "MetricNotFoundError",
    "MultiRunComparison",
    "MultiRunRow",
    "PairedResult",
    "PairedSample",
    "RankedRun",
    "ReadReport",
    "ReaderError",
    "RecordCounts",
    "RecordKind",
    "RecordRow",
    "RunComparison",
    "RunStatus",
    "RunSummary",
    "Scope",
    "UnknownRunError",
    "UnreadableFileError",
    "Workspace",
    "WorkspaceNotFoundError",
    "infer_direction",
    "items_needed",
    "mcnemar_exact",
    "minimum_detectable_effect",
    "paired_bootstrap_ci",
    "render_html_report",
    "resolve_run_ref",
]


def __getattr__(name: str) -> object:
    # The report renders the readers' answers from the package above them: imported on use,
    # so reading never loads it (and the import cannot run round a circle).
    if name == "render_html_report":
        from ..report import render_html_report

        return render_html_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
