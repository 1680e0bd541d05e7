"""Starting the view: the app (Starlette) and its server (uvicorn), both optional."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._errors import ContextaError

if TYPE_CHECKING:
    from ..readers import Workspace

__all__ = ["MissingExtraError", "create_app", "serve"]

_INSTALL = "pip install 'contexta-async[view]'"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class MissingExtraError(ContextaError, ImportError):
    """The view's optional dependencies (Starlette, uvicorn) are not installed; ``missing``
    names the one that was not found."""

    code = "missing_extra"

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"the view needs {missing}, which is not installed: {_INSTALL}",
            details={"missing": missing, "install": _INSTALL},
        )
        self.missing = missing


def create_app(workspace: str | os.PathLike[str] | Workspace, **options: Any) -> Any:
    """The view's Starlette app for ``workspace`` (see ``serve``); options: ``poll_interval``
    (seconds between reads of what was appended, default 0.25) and ``allowed_hosts`` (the
    Host header names answered; None: any)."""
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise MissingExtraError("Starlette") from None
    from ._app import create_app as build

    return build(workspace, **options)


def serve(
    workspace: str | os.PathLike[str] | Workspace = ".contexta",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    poll_interval: float = 0.25,
) -> None:
    """Serve the view of ``workspace`` on ``host``:``port`` until interrupted.

    It binds to the loopback interface unless told otherwise; on another address it answers
    any Host name, on loopback only loopback names (a DNS-rebinding page cannot read it).
    """
    try:
        import uvicorn
    except ImportError:
        raise MissingExtraError("uvicorn") from None
    allowed = _LOOPBACK if host in _LOOPBACK else None
    app = create_app(workspace, poll_interval=poll_interval, allowed_hosts=allowed)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        # Open event streams never end by themselves: let shutdown cut them.
        timeout_graceful_shutdown=1,
    )
