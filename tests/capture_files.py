"""Reading capture files back in tests: real files, strict parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec


def read_lines(workspace: Path, family: str) -> list[dict[str, Any]]:
    """Every line of one family's capture file, decoded; fails on any invalid line."""
    path = workspace / "cache" / "capture" / f"{family.lower()}.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a torn line"
    return [msgspec.json.decode(line) for line in data.splitlines()]


def metrics(workspace: Path) -> list[dict[str, Any]]:
    return [
        line for line in read_lines(workspace, "RECORD") if line["payload_type"] == "MetricRecord"
    ]


def last_status(workspace: Path) -> dict[str, str]:
    """The newest CONTEXT status per ref."""
    status: dict[str, str] = {}
    for line in read_lines(workspace, "CONTEXT"):
        status[line["payload_ref"]] = line["payload"]["status"]
    return status


def count_opens(monkeypatch: Any, name: str) -> list[str]:
    """From now on, the path of every ``os.open`` of a file called ``name`` (appended to the
    list returned): how many times a reader opens it."""
    import os

    opened: list[str] = []
    real_open = os.open

    def counting_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(file).endswith(name):
            opened.append(str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    return opened
