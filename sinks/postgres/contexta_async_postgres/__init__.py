"""contexta-async-postgres: ship contexta-async workspaces to PostgreSQL.

``Shipper(workspace, "postgresql://...").ship()`` forwards every whole line of a workspace,
from the position the store already holds, one transaction per batch; the CLI does the same
with ``contexta-async --workspace WS ship --to postgresql://... [--follow]``.
``Workspace("postgresql://...")`` (through ``PostgresSource``) reads the store as the readers
read a workspace folder, with the same answers.
"""

from typing import TYPE_CHECKING, Any

from ._background import BackgroundShipper
from ._errors import (
    SchemaVersionError,
    ShipPositionError,
    StoreAuthenticationError,
    StoreConnectionError,
    StoreError,
    WorkspaceIdentityError,
)
from ._identity import workspace_id
from ._lines import Corrupt
from ._schema import SCHEMA, SCHEMA_VERSION
from ._shipper import Shipper, ShipProgress, ShipResult

if TYPE_CHECKING:
    from ._reader import PostgresSource

__version__ = "0.1.0"
"""The installed version of contexta-async-postgres."""

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "BackgroundShipper",
    "Corrupt",
    "PostgresSource",
    "SchemaVersionError",
    "ShipPositionError",
    "ShipProgress",
    "ShipResult",
    "Shipper",
    "StoreAuthenticationError",
    "StoreConnectionError",
    "StoreError",
    "WorkspaceIdentityError",
    "__version__",
    "workspace_id",
]


if not TYPE_CHECKING:  # (type checkers see the import above, and every other name as missing)

    def __getattr__(name: str) -> Any:
        # The reader side (and with it the readers and numpy) is imported when first used:
        # the shipper's helper process, which imports this package, never needs it.
        if name == "PostgresSource":
            from ._reader import PostgresSource

            return PostgresSource
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
