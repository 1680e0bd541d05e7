"""Errors of the PostgreSQL store. Every one is a ``contexta_async.ContextaError``.

No message ever holds a password: connection errors name the host, port, database and user.
"""

from __future__ import annotations

from contexta_async import ContextaError

__all__ = [
    "SchemaVersionError",
    "ShipPositionError",
    "StoreAuthenticationError",
    "StoreConnectionError",
    "StoreError",
    "WorkspaceIdentityError",
]


class StoreError(ContextaError):
    """Something went wrong between the shipper and the store."""

    code = "store_error"


class StoreConnectionError(StoreError):
    """The store could not be reached, or the connection dropped and every retry failed.

    ``target`` is ``host:port/database`` (no password), ``reason`` libpq's reason in one line.
    """

    code = "store_connection"

    _what = "cannot reach PostgreSQL at"

    def __init__(self, target: str, reason: str, *, attempts: int = 1) -> None:
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"{self._what} {target}{tried}: {reason}",
            details={"target": target, "reason": reason, "attempts": attempts},
        )
        self.target = target
        """``host:port/database`` of the store (never the password)."""
        self.reason = reason
        """Why, in one line."""


class StoreAuthenticationError(StoreConnectionError):
    """The store refused the credentials (wrong password, unknown user, no pg_hba entry).

    Never retried: the same credentials fail the same way.
    """

    code = "store_authentication"
    _what = "PostgreSQL refused the credentials at"


class SchemaVersionError(StoreError):
    """The store's schema is newer than this client understands: upgrade
    contexta-async-postgres. Nothing was written (or, for a reader, read)."""

    code = "schema_version"

    def __init__(
        self, store_version: int, client_version: int, target: str, *, reading: bool = False
    ) -> None:
        done = "nothing was read" if reading else "nothing was written"
        super().__init__(
            f"the store at {target} has schema version {store_version}, newer than this "
            f"client's {client_version}: upgrade contexta-async-postgres "
            f"(pip install -U contexta-async-postgres); {done}",
            details={
                "store_version": store_version,
                "client_version": client_version,
                "target": target,
            },
        )
        self.store_version = store_version
        """The schema version the store holds."""
        self.client_version = client_version
        """The newest schema version this client knows."""


class ShipPositionError(StoreError):
    """A workspace file no longer matches the position the store has shipped it up to (it
    was truncated or replaced). That file is not shipped: its lines would be new lines at old
    offsets."""

    code = "ship_position"

    def __init__(self, file: str, position: int, reason: str) -> None:
        super().__init__(
            f"{file}: {reason} (the store has shipped it up to byte {position}); the file was "
            "truncated or replaced since: give the workspace a new identity (delete "
            "cache/workspace-id) to ship it as a new workspace",
            details={"file": file, "position": position, "reason": reason},
        )
        self.file = file
        """The file's name, e.g. ``record.jsonl``."""
        self.position = position
        """The byte offset the store has shipped the file up to."""


class WorkspaceIdentityError(ContextaError):
    """The workspace's identity file (``cache/workspace-id``) is unreadable or not an id."""

    code = "workspace_identity"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path}: {reason}; the file holds the workspace's identity for shipping "
            "(one UUID): restore it, or delete it only if this workspace was never shipped",
            details={"path": path, "reason": reason},
        )
        self.path = path
        """The identity file."""
