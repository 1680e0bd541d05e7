"""Strict reading of capture files for the reliability tests (imported, never run as a child)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

__all__ = ["FAMILY_FILES", "capture_dir", "parse_strict", "read_bytes", "read_family"]

FAMILY_FILES = ("context.jsonl", "record.jsonl", "artifact.jsonl", "degradation.jsonl")
_DECODER = msgspec.json.Decoder()


def capture_dir(workspace: Path) -> Path:
    return workspace / "cache" / "capture"


def read_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def parse_strict(data: bytes, name: str = "file") -> tuple[list[dict[str, Any]], bytes]:
    """Parse every newline-terminated line (each must be one valid JSON object).

    Returns the decoded lines and the bytes after the last newline (a torn tail, if any).
    """
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    try:
        lines: list[dict[str, Any]] = _DECODER.decode_lines(body)
    except msgspec.DecodeError:
        lines = []
    # decode_lines also accepts blank lines and two objects glued on one line: count them.
    if len(lines) == body.count(b"\n") and all(type(line) is dict for line in lines):
        return lines, tail
    for number, raw in enumerate(body.split(b"\n")[:-1], start=1):
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise AssertionError(f"{name} line {number} is not valid JSON: {raw[:120]!r}") from None
        if type(value) is not dict:
            raise AssertionError(f"{name} line {number} is not a JSON object: {raw[:120]!r}")
    raise AssertionError(f"{name}: undecodable, yet every line parses alone")


def read_family(workspace: Path, family: str) -> list[dict[str, Any]]:
    """Every line of one family's file; fails on a torn tail or any invalid line."""
    name = f"{family.lower()}.jsonl"
    lines, tail = parse_strict(read_bytes(capture_dir(workspace) / name), name)
    assert tail == b"", f"{name} ends with a torn line: {tail[:120]!r}"
    return lines
