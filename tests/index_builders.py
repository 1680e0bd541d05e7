"""Test-only builders of ``record.index`` frames (the sink builds its own from items)."""

from __future__ import annotations

from contexta_async.sinks._index import ChunkColumns, PendingFrame

__all__ = ["columns_from_lines", "encode_frame"]

_NONE = float("nan")


def columns_from_lines(
    types: list[str], subjects: list[str | None], keys: list[str | None], values: list[float | None]
) -> ChunkColumns | None:
    """The columns of a chunk read back from JSON: None when a metric has no value
    (the index holds NaN only where the key is None)."""
    if any(v is None for k, v in zip(keys, values, strict=True) if k is not None):
        return None
    return ChunkColumns(types, subjects, keys, [_NONE if v is None else v for v in values])


def encode_frame(columns: ChunkColumns, data: bytes, end: int) -> bytes:
    """The frame for one chunk ``data`` (whole lines), whose last byte is at ``end - 1``."""
    pending = PendingFrame(end - len(data))
    pending.extend(columns, data, end)
    return b"".join(pending.encode())
