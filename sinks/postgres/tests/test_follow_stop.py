"""``ship --follow`` stopped by a signal while the store is unreachable: a normal end, exit 0
(what is committed stays committed; the rest ships on the next run)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from pgtest import PASSWORD, capture, start_ship


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_stopped_by_a_signal_while_reconnecting_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    ws = capture(tmp_path / "ws")
    url = f"postgresql://shipper:{PASSWORD}@127.0.0.1:{_closed_port()}/db"
    proc = start_ship(ws, url, "--follow", "--retries", "1000")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # its signal handlers are set: it is retrying
            if "contexta_async.ship_retry" in line:
                break
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "contexta-async: error" not in err
    assert out.startswith("shipped 0 line(s) in 0 batch(es)")
