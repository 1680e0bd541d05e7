"""contexta-async: asynchronous, durable capture of ML and LLM evaluation telemetry.

Capture with ``async with ctx.run(...)`` in async code or ``with ctx.run(...)`` in scripts; the
records land, fsynced in batches, in a Contexta-compatible JSONL workspace.
"""

from ._client import Contexta
from ._errors import (
    ClosedScopeError,
    ConfigurationError,
    ContextaError,
    DeliveryError,
    DuplicateScopeError,
    FlushTimeoutError,
    LifecycleError,
    QueueFullError,
    ShutdownTimeoutError,
    StoreNotInstalledError,
    ValidationError,
    WriterStoppedError,
)
from ._pipeline import Statistics
from ._scopes import (
    AsyncBatch,
    AsyncRun,
    AsyncSample,
    AsyncStage,
    Batch,
    Opening,
    Run,
    Sample,
    Stage,
)
from .sinks import LocalJsonlSink, MemorySink, Sink

__version__ = "0.1.0"
"""The installed version of contexta-async."""

__all__ = [
    "AsyncBatch",
    "AsyncRun",
    "AsyncSample",
    "AsyncStage",
    "Batch",
    "ClosedScopeError",
    "ConfigurationError",
    "Contexta",
    "ContextaError",
    "DeliveryError",
    "DuplicateScopeError",
    "FlushTimeoutError",
    "LifecycleError",
    "LocalJsonlSink",
    "MemorySink",
    "Opening",
    "QueueFullError",
    "Run",
    "Sample",
    "ShutdownTimeoutError",
    "Sink",
    "Stage",
    "Statistics",
    "StoreNotInstalledError",
    "ValidationError",
    "WriterStoppedError",
    "__version__",
]
