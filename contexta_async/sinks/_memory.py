"""MemorySink: keeps encoded lines in memory, for tests and notebooks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import msgspec

from .._format.lines import Item
from ._base import Chunk, Sink, check_sink_name, stamp_lines

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Encodes lines exactly as LocalJsonlSink does and keeps them in a list."""

    def __init__(self, *, name: str = "memory") -> None:
        self.name = check_sink_name(name)
        self._encoder = msgspec.json.Encoder()  # keys arrive sorted: see _format.lines
        self._lock = threading.Lock()
        self._data: list[bytes] = []

    def prepare(self, items: Sequence[Item], captured_at: str) -> list[Chunk]:
        """All items as one chunk of encoded lines."""
        lines = stamp_lines(items, captured_at, self.name)
        return [Chunk("*", "memory", self._encoder.encode_lines(lines), items)]

    def write(self, chunk: Chunk) -> None:
        """Keep the chunk's bytes."""
        with self._lock:
            self._data.append(chunk.data)

    def reinit_after_fork(self) -> None:
        """A fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def lines(self, family: str | None = None) -> list[dict[str, Any]]:
        """Every line written so far, decoded, optionally only one family's."""
        with self._lock:
            data = b"".join(self._data)
        decoded: list[dict[str, Any]] = [msgspec.json.decode(raw) for raw in data.splitlines()]
        return [line for line in decoded if family is None or line["family"] == family]
