"""Starting the view: the app (Starlette) and its server (uvicorn), both optional."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ContextaError, ValidationError

if TYPE_CHECKING:
    from ..readers import Workspace

__all__ = ["ListenError", "MissingExtraError", "create_app", "listen", "serve", "server"]

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


class ListenError(ContextaError, OSError):
    """The view cannot listen on ``host``:``port``: the port is in use, the host does not
    resolve or is not an address of this machine...; ``reason`` says which (the OS's words)."""

    code = "listen_error"

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(
            f"cannot listen on {host}:{port}: {reason}",
            details={"host": host, "port": port, "reason": reason},
        )
        self.host = host
        self.port = port
        self.reason = reason


def _check_address(host: object, port: object) -> None:
    if not isinstance(host, str):
        raise ValidationError("host", "must be a host name or address (str)", host)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValidationError("port", "must be an int between 0 and 65535", port)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0: one the OS picks).
    ``[::1]`` is taken as ``::1``. Raises ListenError when it cannot be bound."""
    _check_address(host, port)
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            address or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(host, port, str(getattr(exc, "strerror", None) or exc)) from exc
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restarted view gets its port back while old connections linger
        # in TIME_WAIT (a port another socket listens on stays refused).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc.strerror or str(exc)) from exc
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    """The view's address: ``host`` as given (the bound address if empty), with the port
    ``sock`` listens on (the one the OS picked for port 0)."""
    bound, port = sock.getsockname()[:2]
    name = host or bound
    shown = f"[{name}]" if ":" in name and not name.startswith("[") else name
    return f"http://{shown}:{port}/"


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
    ready: Callable[[str], object] | None = None,
) -> None:
    """Serve the view of ``workspace`` on ``host``:``port`` until interrupted.

    It binds to the loopback interface unless told otherwise; on another address it answers
    any Host name, on loopback only loopback names (a DNS-rebinding page cannot read it).
    Port 0 lets the OS pick a free port. ``ready``, if given, is called with the view's URL
    (the port it listens on) once the server accepts connections. An address that cannot be
    listened on raises ListenError before anything is served; bad arguments raise
    ValidationError naming them.
    """
    _check_address(host, port)
    if _missing("uvicorn"):
        raise MissingExtraError("uvicorn")
    allowed = _LOOPBACK if host in _LOOPBACK else None
    app = create_app(workspace, poll_interval=poll_interval, allowed_hosts=allowed)
    sock = listen(host, port)
    try:
        server(app, ready=None if ready is None else (lambda: ready(url_of(host, sock)))).run(
            sockets=[sock]
        )
    finally:
        sock.close()


def server(app: Any, **config: Any) -> Any:
    """A uvicorn server for the view's ``app`` whose shutdown first ends the open event
    streams (they would hold it until its graceful timeout, then be cut with an error);
    ``ready`` (a callable, optional) is called once it has started."""
    import uvicorn

    ready: Callable[[], object] | None = config.pop("ready", None)

    class _ViewServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if ready is not None and self.started:
                ready()

        async def shutdown(self, sockets: Any = None) -> None:
            app.state.view.close()
            await super().shutdown(sockets=sockets)

    options: dict[str, Any] = {"log_level": "warning", "timeout_graceful_shutdown": 5}
    return _ViewServer(uvicorn.Config(app, **(options | config)))
