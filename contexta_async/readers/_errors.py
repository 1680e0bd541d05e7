"""Errors raised by the readers. Each names the run, file or rule that failed."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import ContextaError

__all__ = [
    "AmbiguousMetricError",
    "AmbiguousRunError",
    "EmptyWorkspaceError",
    "MetricNotFoundError",
    "ReaderError",
    "UnknownRunError",
    "UnreadableFileError",
    "WorkspaceNotFoundError",
]


class ReaderError(ContextaError):
    """Base class of every error the readers raise on purpose."""

    code = "reader_error"


class WorkspaceNotFoundError(ReaderError):
    """The workspace path does not exist or holds no capture folder."""

    code = "workspace_not_found"

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no Contexta workspace at {path} (expected <workspace>/cache/capture/*.jsonl)",
            details={"path": path},
        )
        self.path = path


class EmptyWorkspaceError(ReaderError):
    """The workspace exists but holds no run."""

    code = "empty_workspace"

    def __init__(self, path: str) -> None:
        super().__init__(f"the workspace at {path} holds no runs", details={"path": path})
        self.path = path


class UnreadableFileError(ReaderError):
    """A capture file exists but could not be read (permissions, I/O error...)."""

    code = "unreadable_file"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}", details={"path": path, "reason": reason})
        self.path = path
        self.reason = reason


class UnknownRunError(ReaderError):
    """No run has this ref, and no run ref ends with it."""

    code = "unknown_run"

    def __init__(self, name: str, known: Sequence[str]) -> None:
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        super().__init__(
            f"unknown run {name!r}; runs in the workspace: {shown or 'none'}",
            details={"run": name, "known": list(known)},
        )
        self.run = name


class AmbiguousRunError(ReaderError):
    """A suffix matches more than one run ref."""

    code = "ambiguous_run"

    def __init__(self, name: str, matches: Sequence[str]) -> None:
        super().__init__(
            f"run {name!r} is ambiguous; it matches {', '.join(matches)}; give more of the ref",
            details={"run": name, "matches": list(matches)},
        )
        self.run = name
        self.matches = list(matches)


class MetricNotFoundError(ReaderError):
    """None of the runs holds the metric (in the given stage)."""

    code = "metric_not_found"

    def __init__(self, key: str, stage: str | None) -> None:
        where = f" in stage {stage!r}" if stage else ""
        super().__init__(
            f"no run holds metric {key!r}{where}", details={"metric": key, "stage": stage}
        )


class AmbiguousMetricError(ReaderError):
    """The metric key is captured at several places; a stage (or scope) must be named."""

    code = "ambiguous_metric"

    def __init__(self, key: str, places: Sequence[str]) -> None:
        super().__init__(
            f"metric {key!r} is captured at several places: {', '.join(places)}; "
            f"choose one with stage=... (CLI: --stage)",
            details={"metric": key, "places": list(places)},
        )
        self.places = list(places)
