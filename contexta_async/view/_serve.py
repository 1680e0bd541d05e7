"""Starting the view: the app (Starlette) and its server (uvicorn), both optional."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

from .._errors import ContextaError

if TYPE_CHECKING:
    from ..readers import Workspace

__all__ = ["MissingExtraError", "create_app", "serve", "server"]

_INSTALL = "pip install 'contexta-async[view]'"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _missing(module: str) -> bool:
    # A module set to None in sys.modules is one that must not import (find_spec raises).
    if module in sys.modules:
        return sys.modules[module] is None
    return importlib.util.find_spec(module) is None


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
    if _missing("starlette"):
        raise MissingExtraError("Starlette")
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
    if _missing("uvicorn"):
        raise MissingExtraError("uvicorn")
    allowed = _LOOPBACK if host in _LOOPBACK else None
    app = create_app(workspace, poll_interval=poll_interval, allowed_hosts=allowed)
    server(app, host=host, port=port).run()


def server(app: Any, **config: Any) -> Any:
    """A uvicorn server for the view's ``app`` whose shutdown first ends the open event
    streams (they would hold it until its graceful timeout, then be cut with an error)."""
    import uvicorn

    class _ViewServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            app.state.view.close()
            await super().shutdown(sockets=sockets)

    options: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 5}
    return _ViewServer(uvicorn.Config(app, **(options | config)))
