"""Artifact files: resolving the path and hashing the contents (blocking I/O; run off-loop)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from ._errors import ValidationError
from ._validation import check_string

__all__ = ["ArtifactFile", "inspect_artifact", "resolve_artifact_path"]

_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArtifactFile:
    exists: bool
    size_bytes: int | None
    hash_value: str | None


MAX_PATH_LENGTH = 4096  # characters of an artifact path as given (Linux's PATH_MAX)


def resolve_artifact_path(path: object, field: str = "path") -> tuple[str, str]:
    """The path as given (its ``os.fspath`` text, written as the artifact's ``source``) and
    made absolute, without touching the file system (no following for writing)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValidationError(field, "must be a str or os.PathLike", path)
    text = os.fspath(path)
    if not isinstance(text, str):
        raise ValidationError(field, "must be a text path, not bytes", path)
    if not text.strip():
        raise ValidationError(field, "must not be blank", path)
    if len(text) > MAX_PATH_LENGTH:
        raise ValidationError(field, f"must be at most {MAX_PATH_LENGTH} characters", text)
    # No NUL; and no lone surrogate, which os.fsdecode makes of a name that is not UTF-8: the
    # path is written into the line, and UTF-8 cannot encode it.
    check_string(text, field)
    absolute = os.path.abspath(text)
    if len(absolute) > MAX_PATH_LENGTH:
        raise ValidationError(field, f"must be at most {MAX_PATH_LENGTH} characters", absolute)
    return text, absolute


def inspect_artifact(
    absolute_path: str, *, compute_hash: bool, allow_missing: bool, field: str = "path"
) -> ArtifactFile:
    """Stat and (optionally) SHA-256 the file, reading it in 1 MiB chunks; never writes."""
    try:
        info = os.stat(absolute_path)
    except FileNotFoundError:
        if allow_missing:
            return ArtifactFile(False, None, None)
        raise ValidationError(
            field, "file does not exist (pass allow_missing=True to register it)", absolute_path
        ) from None
    except OSError as exc:
        raise ValidationError(field, f"cannot be read: {exc.strerror}", absolute_path) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ValidationError(field, "must be a regular file", absolute_path)
    if not compute_hash:
        return ArtifactFile(True, info.st_size, None)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(absolute_path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ValidationError(field, f"cannot be read: {exc.strerror}", absolute_path) from exc
    return ArtifactFile(True, size, digest.hexdigest())
