"""Export: a workspace's metric records (or events) as Parquet, CSV, JSON Lines or Arrow.

```python
from contexta_async.export import export_workspace, to_arrow
from contexta_async.readers import Workspace

ws = Workspace(".contexta")
await export_workspace(ws, "metrics.parquet")     # one row per metric record, streamed
table = await to_arrow(ws, ["grounded"])          # or ws.to_arrow(), ws.to_pandas(), ...
```

CSV and JSON Lines need nothing beyond the core install; Parquet and Arrow need pyarrow
(``pip install 'contexta-async[analysis]'``), ``to_pandas``/``to_polars`` pandas or polars.
"""

from ._columns import EVENT_COLUMNS, METRIC_COLUMNS
from ._errors import ExtraNotInstalledError, UnwritableOutputError
from ._export import BATCH_ROWS, ExportResult, export_workspace, to_arrow, to_pandas, to_polars
from ._writers import FORMATS, ExportFormat

__all__ = [
    "BATCH_ROWS",
    "EVENT_COLUMNS",
    "FORMATS",
    "METRIC_COLUMNS",
    "ExportFormat",
    "ExportResult",
    "ExtraNotInstalledError",
    "UnwritableOutputError",
    "export_workspace",
    "to_arrow",
    "to_pandas",
    "to_polars",
]
