"""The README's first command: the quickstart captures two runs and picks one from disk."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .capture_files import last_status, metrics

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_captures_two_runs_and_selects_the_better_from_disk(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(QUICKSTART), "--cases", "60"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Captured ") and lines[0].endswith("into .contexta/")
    rate = re.fullmatch(
        r"Pass rate: (\d\.\d{3}) \(run:quickstart\.helpful-only\) -> (\d\.\d{3}) "
        r"\(run:quickstart\.grounded\)",
        lines[1],
    )
    assert rate, lines[1]
    assert lines[2].startswith("Paired on 60 cases: correct ")
    assert lines[-1] == "Records: .contexta/cache/capture/record.jsonl"

    workspace = tmp_path / ".contexta"
    rows = metrics(workspace)
    correct: dict[str, list[float]] = {}
    for row in rows:
        payload = row["payload"]["payload"]
        if payload["metric_key"] == "correct":
            correct.setdefault(row["payload"]["envelope"]["run_ref"], []).append(payload["value"])
    assert {ref: len(values) for ref, values in correct.items()} == {
        "run:quickstart.helpful-only": 60,
        "run:quickstart.grounded": 60,
    }
    left = sum(correct["run:quickstart.helpful-only"]) / 60
    right = sum(correct["run:quickstart.grounded"]) / 60
    # the printed numbers are the ones on disk, and the selection follows them
    assert rate.group(1) == f"{left:.3f}" and rate.group(2) == f"{right:.3f}"
    assert lines[2].split("correct ")[1].startswith(f"{right - left:+.3f}")
    winner = "grounded" if right > left else "helpful-only"
    assert lines[3].startswith(f"Selected run: run:quickstart.{winner}")
    assert last_status(workspace)["run:quickstart.grounded"] == "completed"
