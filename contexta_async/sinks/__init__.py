"""Sinks: where captured lines go. ``LocalJsonlSink`` is the default."""

from ._base import Chunk, FsyncError, Sink
from ._jsonl import LocalJsonlSink
from ._memory import MemorySink

__all__ = ["Chunk", "FsyncError", "LocalJsonlSink", "MemorySink", "Sink"]
