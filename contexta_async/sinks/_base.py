"""The sink interface: how the writer hands encoded lines to storage."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._errors import ConfigurationError, ValidationError
from .._format.lines import CaptureLine, Item
from .._validation import check_string

__all__ = ["Chunk", "FsyncError", "Sink", "check_sink_name", "stamp_lines"]


def check_sink_name(name: object) -> str:
    """A sink's name is written into every line it writes: a non-blank string without NUL or
    anything UTF-8 cannot encode, at most 255 characters."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("name", "must be a non-blank string", name)
    if len(name) > 255:
        raise ConfigurationError("name", "must be at most 255 characters", name)
    try:
        check_string(name, "name")
    except ValidationError as exc:
        raise ConfigurationError("name", exc.rule, name) from None
    return name


class FsyncError(OSError):
    """fsync failed after the data was written.

    The kernel may already have dropped the dirty pages, so a later successful fsync does not
    make this data durable (PostgreSQL's "fsyncgate"). The writer reports such a chunk as not
    durable and never retries it.
    """


def stamp_lines(items: Sequence[Item], captured_at: str, sink_name: str) -> list[CaptureLine]:
    """Wrap queued items into capture lines carrying the write time and the sink's name."""
    return [
        CaptureLine(
            captured_at=captured_at,
            family=item.family,
            payload=item.payload,
            payload_ref=item.payload_ref,
            payload_type=item.payload_type,
            sink_name=sink_name,
        )
        for item in items
    ]


@dataclass(slots=True)
class Chunk:
    """Encoded lines bound for one place, written (and fsynced) as one unit."""

    family: str
    target: str
    data: bytes
    items: Sequence[Item] = field(repr=False)


class Sink(abc.ABC):
    """A destination for captured lines.

    ``prepare`` and ``write`` run in a worker thread, one batch at a time, never concurrently
    for one sink. ``write`` either makes the whole chunk durable, or raises ``OSError`` leaving
    none of it visible, or raises ``FsyncError`` when the data was written but not made durable.
    """

    name: str = "sink"
    fsync: bool = False
    """True when ``write`` fsyncs each chunk (counted in ``statistics().fsyncs``)."""

    @abc.abstractmethod
    def prepare(self, items: Sequence[Item], captured_at: str) -> list[Chunk]:
        """Encode ``items`` into chunks, stamping ``captured_at`` and the sink's name.

        Must have no side effects: when it raises, the writer calls it again with each item
        alone, to find the lines at fault, and then with the others (which it writes).
        """

    @abc.abstractmethod
    def write(self, chunk: Chunk) -> None:
        """Write one chunk whole, durably."""

    def close(self) -> None:  # noqa: B027 - optional hook; most sinks hold nothing to release
        """Release resources. Called once, after the last write."""

    def reinit_after_fork(self) -> None:  # noqa: B027 - optional hook
        """Called in a forked child process before it writes anything.

        The child inherits this object as the parent left it, perhaps mid-write: a sink that
        holds locks replaces them here (another thread may have held them at the fork), and
        one that holds per-process state (open files, lines of the parent not yet written)
        lets go of it, so that the child writes only its own lines.
        """
