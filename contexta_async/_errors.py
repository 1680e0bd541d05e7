"""The exception hierarchy. Every error the library raises on purpose is a ContextaError."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ClosedScopeError",
    "ConfigurationError",
    "ContextaError",
    "DeliveryError",
    "DuplicateScopeError",
    "FlushTimeoutError",
    "LifecycleError",
    "QueueFullError",
    "ShutdownTimeoutError",
    "StoreNotInstalledError",
    "ValidationError",
    "WriterStoppedError",
]


class ContextaError(Exception):
    """Base class. ``code`` is a stable machine-readable name, ``details`` the facts behind it."""

    code = "contexta_error"
    """A stable, machine-readable name of the condition."""

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})
        """The facts behind the error, as a JSON-safe mapping."""


_MAX_SHOWN = 80
_MAX_FIELD = 160


def _abbreviate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, keeping both ends (for a field path, the
    start names the argument and the end the key nearest the offending value)."""
    if len(text) <= limit:
        return text
    tail = (limit - 3) // 2
    return f"{text[: limit - 3 - tail]}...{text[-tail:]}"


class ValidationError(ContextaError, ValueError):
    """An argument broke a rule. ``field`` names the argument, ``rule`` the rule it broke.

    The message stays short whatever the input: the value is shown cut to 80 characters, and
    ``field`` (a path such as ``attributes['a'][0]``) to 160, keeping its start and its end.
    """

    code = "validation_error"

    def __init__(self, field: str, rule: str, value: Any = None) -> None:
        if isinstance(value, str) and len(value) > _MAX_SHOWN:
            value = value[:_MAX_SHOWN]  # repr of a 10 MB string only to cut it would cost
        shown = repr(value)
        if len(shown) > _MAX_SHOWN:
            shown = shown[: _MAX_SHOWN - 3] + "..."
        field = _abbreviate(field, _MAX_FIELD)
        super().__init__(
            f"{field}: {rule} (got {shown})",
            details={"field": field, "rule": rule},
        )
        self.field = field
        """The argument (or option) that broke the rule, e.g. ``"key"``."""
        self.rule = rule
        """The rule it broke, in words."""


class ConfigurationError(ValidationError):
    """An option given to ``Contexta(...)`` or a sink is invalid."""

    code = "configuration_error"


class StoreNotInstalledError(ConfigurationError):
    """A store URL names a scheme whose distribution is not installed (``scheme`` says which).

    The core keeps its small dependency set: each external store is its own distribution,
    found through the ``contexta_async.stores`` entry point group.
    """

    code = "store_not_installed"

    def __init__(self, field: str, scheme: str, distribution: str) -> None:
        super().__init__(
            field,
            f"the {scheme}:// scheme needs the {distribution} distribution: "
            f"pip install {distribution}",
            scheme,
        )
        self.scheme = scheme
        """The URL scheme, e.g. ``"postgresql"`` (never the whole URL: it may hold a password)."""
        self.distribution = distribution
        """The distribution to install."""


class LifecycleError(ContextaError):
    """A scope or context was used in an order its lifecycle does not allow."""

    code = "lifecycle_error"


class ClosedScopeError(LifecycleError):
    """Capture was attempted on a scope (or context) that is already closed."""

    code = "closed_scope"


class DuplicateScopeError(LifecycleError):
    """A scope with the same ref is already open in this context."""

    code = "duplicate_scope"


class QueueFullError(ContextaError):
    """The queue is full and the call may not wait (``*_nowait``, or ``overflow="raise"``)."""

    code = "queue_full"


class DeliveryError(ContextaError):
    """Records were captured but could not be made durable by a sink.

    ``failed`` is the number of lines that were not made durable, ``runs`` maps each affected
    run ref to its count, and ``errors`` lists one message per failed write.
    """

    code = "delivery_error"

    def __init__(self, failed: int, runs: Mapping[str, int], errors: list[str]) -> None:
        run_list = ", ".join(f"{ref} ({n})" for ref, n in sorted(runs.items()))
        super().__init__(
            f"{failed} captured line(s) could not be made durable; runs: {run_list or 'none'}; "
            f"first error: {errors[0] if errors else 'unknown'}",
            details={"failed": failed, "runs": dict(runs), "errors": list(errors)},
        )
        self.failed = failed
        """How many captured lines were not made durable."""
        self.runs = dict(runs)
        """Run ref -> lines of that run not made durable."""
        self.errors = list(errors)
        """One message per failed write: sink, file and OS error."""


class ShutdownTimeoutError(ContextaError):
    """Closing did not drain the queue within the shutdown timeout; ``pending`` lines are lost."""

    code = "shutdown_timeout"

    def __init__(self, pending: int, timeout: float) -> None:
        super().__init__(
            f"shutdown timed out after {timeout:g}s with {pending} line(s) not yet durable",
            details={"pending": pending, "timeout": timeout},
        )
        self.pending = pending
        """Lines not yet durable when time ran out."""


class FlushTimeoutError(ContextaError, TimeoutError):
    """``flush(timeout=...)`` ran out of time; ``pending`` lines were not yet durable.

    Nothing is lost by the timeout itself: the lines stay queued and a later flush may succeed.
    """

    code = "flush_timeout"

    def __init__(self, pending: int, timeout: float) -> None:
        super().__init__(
            f"flush timed out after {timeout:g}s with {pending} line(s) not yet durable",
            details={"pending": pending, "timeout": timeout},
        )
        self.pending = pending
        """Lines not yet durable when time ran out."""


class WriterStoppedError(ContextaError):
    """The writer thread stopped on an unexpected error, so nothing more can be written.

    A failing write is no such error (it is retried, then reported as ``DeliveryError``, and the
    writer goes on); this is a bug in the library or in a custom sink. From then on every
    capture, ``flush()`` and ``close()`` of the context raises this error instead of hanging:
    ``error`` says what stopped the writer, and ``pending`` how many captured lines it had not
    made durable (for a flush: of the lines that flush covers). Nothing restarts the writer.
    """

    code = "writer_stopped"

    def __init__(self, error: str, pending: int) -> None:
        super().__init__(
            f"the writer thread stopped on an unexpected error ({error}); {pending} captured "
            "line(s) not yet durable will not be written, and nothing more can be captured",
            details={"error": error, "pending": pending},
        )
        self.error = error
        """What stopped the writer: the repr of its exception."""
        self.pending = pending
        """Captured lines the writer had not made durable."""
