"""External stores: how the core finds a store distribution by the scheme of its URL.

Each store (PostgreSQL first) is its own distribution, so that the core keeps its small
dependency set. A distribution registers an object in the ``contexta_async.stores`` entry point
group under the URL scheme it serves (``postgresql``, ``postgres``); the object implements
:class:`StoreBackend`. ``contexta-async ship --to URL`` looks the scheme up here.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Protocol, TextIO, runtime_checkable

from ._errors import StoreNotInstalledError, ValidationError

__all__ = [
    "ENTRY_POINT_GROUP",
    "ShipRequest",
    "StoreBackend",
    "load_store_backend",
    "url_scheme",
]

ENTRY_POINT_GROUP = "contexta_async.stores"
"""The entry point group a store distribution registers its :class:`StoreBackend` in."""

# Which distribution serves a scheme, for the error that says what to install.
_DISTRIBUTIONS = {
    "postgresql": "contexta-async-postgres",
    "postgres": "contexta-async-postgres",
}


@dataclass(frozen=True, slots=True)
class ShipRequest:
    """What ``contexta-async ship`` was asked to do, handed to the store's backend."""

    workspace: str
    """The workspace directory (or its capture folder), as given."""
    url: str = field(repr=False)
    """The store URL, as given. It may hold a password: never print or log it as is (it is
    left out of this object's repr)."""
    follow: bool
    """Keep shipping new lines until SIGINT or SIGTERM (otherwise ship what is there, exit)."""
    batch_lines: int
    """Most lines per transaction."""
    retries: int
    """Reconnection attempts after a dropped or refused connection before giving up."""
    poll_interval: float
    """With ``follow``: seconds between looks at the workspace when it has nothing new."""
    json: bool
    """Print the result as JSON."""
    out: TextIO
    """Where the result goes."""
    err: TextIO
    """Where progress goes (a progress line only when this is a terminal)."""


@runtime_checkable
class StoreBackend(Protocol):
    """What a store distribution's entry point object provides."""

    def ship_command(self, request: ShipRequest) -> int:
        """Run ``contexta-async ship``; return the exit status, or raise a ContextaError."""
        ...


def url_scheme(url: str) -> str:
    """The scheme of a store URL, lower-cased (``"postgresql"``), or ``""`` when it has none."""
    head, sep, _ = url.partition("://")
    if not sep or not head or not all(c.isalnum() or c in "+-." for c in head):
        return ""
    return head.lower()


def _entry_points(scheme: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=scheme))


def load_store_backend(url: str, *, field: str = "--to") -> StoreBackend:
    """The backend registered for ``url``'s scheme.

    Raises :class:`StoreNotInstalledError` (naming the distribution to install) for a known
    scheme whose distribution is missing, and ``ValidationError`` for a URL without a scheme or
    with a scheme nothing serves. Neither message holds the URL: it may hold a password.
    """
    scheme = url_scheme(url)
    if not scheme:
        raise ValidationError(field, "must be a store URL such as postgresql://host/db", "...")
    found = _entry_points(scheme)
    if not found:
        distribution = _DISTRIBUTIONS.get(scheme)
        if distribution is not None:
            raise StoreNotInstalledError(field, scheme, distribution)
        known = ", ".join(f"{s}://" for s in sorted(_DISTRIBUTIONS))
        raise ValidationError(
            field, f"no installed store serves this scheme (known: {known})", scheme
        )
    try:
        backend = found[0].load()
    except ImportError as exc:  # installed, but something it needs is not (e.g. its driver)
        raise ValidationError(
            field,
            f"the {scheme} store ({found[0].value}) cannot be loaded: {exc}; reinstall "
            f"{_DISTRIBUTIONS.get(scheme, 'its distribution')}",
            scheme,
        ) from None
    if not isinstance(backend, StoreBackend):
        raise ValidationError(
            field, f"the {scheme} entry point ({found[0].value}) is not a StoreBackend", scheme
        )
    return backend
