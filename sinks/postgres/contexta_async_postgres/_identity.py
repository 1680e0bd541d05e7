"""The workspace's stable identity and where its files are.

Shipped positions are keyed by (workspace identity, file), so the identity must never change
once a workspace has been shipped, and concurrent first shippers must agree on one. It lives in
``<workspace>/cache/workspace-id`` (one UUID and a newline, mode 0644), published atomically:
the id is written to a private temporary file created with ``O_EXCL`` and fsynced, then
hard-linked into place, which fails if another process got there first. Every process then
reads the one file that won: nobody ever sees it empty or half-written.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from contexta_async import ValidationError

from ._errors import WorkspaceIdentityError

__all__ = ["FAMILY_FILES", "capture_dir", "display_path", "workspace_id", "workspace_root"]

FAMILY_FILES = {
    "context.jsonl": "CONTEXT",
    "record.jsonl": "RECORD",
    "artifact.jsonl": "ARTIFACT",
    "degradation.jsonl": "DEGRADATION",
}
"""The files a workspace ships, and the family each holds (``record.index`` is derived: not
shipped)."""

ID_FILE = "workspace-id"
_MODE = 0o644


def workspace_root(path: str | os.PathLike[str]) -> Path:
    """The workspace directory for ``path``: the workspace itself or its capture folder."""
    given = Path(path)
    if (given / "cache" / "capture").is_dir():
        return given
    if given.name == "capture" and given.parent.name == "cache" and given.is_dir():
        return given.parent.parent
    raise ValidationError(
        "workspace", "must be a workspace directory holding cache/capture/", str(given)
    )


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that encodes to UTF-8 whatever its bytes (a Linux path is bytes): each
    byte that is not UTF-8 shows as ``\\xNN``. What the store records, what messages and log
    events name; the path itself is used, byte for byte, for everything else."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a str holding a surrogate that no byte decoded to
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def capture_dir(root: Path) -> Path:
    """``<workspace>/cache/capture``."""
    return root / "cache" / "capture"


def workspace_id(root: Path) -> uuid.UUID:
    """The workspace's identity, created on first use (see the module docstring)."""
    path = root / "cache" / ID_FILE
    found = _read(path)
    if found is not None:
        return found
    new = uuid.uuid4()
    temp = path.with_name(f".{ID_FILE}.{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, _MODE)
    try:
        try:
            os.fchmod(fd, _MODE)  # whatever the umask: other users' shippers read it
            os.write(fd, f"{new}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # atomic, and fails when another process won the race
        except FileExistsError:
            pass
    finally:
        os.unlink(temp)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the entry must survive a crash, or a later id would differ
    finally:
        os.close(dir_fd)
    found = _read(path)
    if found is None:  # pragma: no cover - removed between the link and this read
        raise WorkspaceIdentityError(str(path), "vanished while being created")
    return found


def _read(path: Path) -> uuid.UUID | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WorkspaceIdentityError(str(path), exc.strerror or str(exc)) from exc
    try:
        text = os.read(fd, 100)
    finally:
        os.close(fd)
    try:
        return uuid.UUID(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        reason = f"does not hold a UUID (got {text[:40]!r})"
        raise WorkspaceIdentityError(str(path), reason) from None
