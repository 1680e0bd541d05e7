"""What the scopes share: the state of one run (``RunState``), and the refs open in one
context (``ScopeRegistry``), which also carries the open scopes through a fork.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref
from typing import TYPE_CHECKING

from ._errors import ClosedScopeError, DuplicateScopeError
from ._format.refs import components

if TYPE_CHECKING:
    from ._pipeline import Pipeline
    from ._scope_core import ScopeCore

__all__ = ["RunState", "ScopeRegistry"]


_registries: weakref.WeakSet[ScopeRegistry] = weakref.WeakSet()


def _reinit_registries_after_fork() -> None:
    for registry in list(_registries):
        registry.reinit_after_fork()


# Another thread may hold a registry's or a scope's lock at the fork: the child gets new ones.
os.register_at_fork(after_in_child=_reinit_registries_after_fork)


class ScopeRegistry:
    """The refs open in one context: a second open scope with the same ref is refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, ScopeCore] = {}
        self._closing = False
        _registries.add(self)

    def reinit_after_fork(self) -> None:
        """In a forked child: fresh locks, and the scopes open at the fork become inherited.

        They stay usable in the child, but they are the parent's: the child writes no closing
        line for them (closing the child's context, or its exit, must not end a run the parent
        is still in), and its records in an inherited run count from a new random start, so
        that they never take a ref the parent's next record takes.
        """
        self._lock = threading.Lock()
        for core in self._open.values():
            core.reinit_after_fork()
        self._open = {}

    def add(self, core: ScopeCore) -> None:
        with self._lock:
            if self._closing:
                raise ClosedScopeError("the Contexta context is closed")
            if core.ref in self._open:
                raise DuplicateScopeError(
                    f"{core.ref} is already open in this context; close it first or choose "
                    f"another name (Contexta 1.0.0 would silently merge the two)",
                    details={"ref": core.ref},
                )
            self._open[core.ref] = core

    def discard(self, core: ScopeCore) -> None:
        with self._lock:
            if self._open.get(core.ref) is core:
                del self._open[core.ref]

    def close_all(self) -> list[ScopeCore]:
        """Refuse new scopes from now on; return the open scopes that closing the context
        closes (runs, and in a forked child the scopes it opened under inherited ones)."""
        with self._lock:
            self._closing = True
            return [
                core for core in self._open.values() if core.parent is None or core.parent.inherited
            ]


class RunState:
    """What every scope of one run shares: the run's refs, its context's pipeline and registry,
    and the counter its record refs are numbered from. Every scope of the run holds it as
    ``core.run``, so that no scope reaches into another scope's fields."""

    __slots__ = (
        "event_prefix",
        "metric_prefix",
        "pipeline",
        "project_ref",
        "record_counter",
        "ref",
        "registry",
    )

    def __init__(self, ref: str, project: str, pipeline: Pipeline, registry: ScopeRegistry) -> None:
        self.ref = ref
        self.project_ref = f"project:{project}"
        self.pipeline = pipeline
        self.registry = registry
        self.restart_counter()
        self.metric_prefix = f"record:{components(self.ref)}.metric-"
        self.event_prefix = f"record:{components(self.ref)}.event-"

    def restart_counter(self) -> None:
        """Count record refs from a new random start (at creation, and in a forked child)."""
        # Record refs: run components + "-" + 12 hex digits that never repeat within a run
        # (a random 48-bit start, counting up), so two processes reusing a run name do not
        # collide either.
        self.record_counter = itertools.count(secrets.randbits(47))  # next() is atomic
