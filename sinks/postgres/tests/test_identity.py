"""The workspace identity: created once, kept, agreed on by concurrent creators."""

from __future__ import annotations

import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from contexta_async_postgres import WorkspaceIdentityError, workspace_id
from contexta_async_postgres._identity import workspace_root
from pgtest import capture

from contexta_async import ValidationError


def test_workspace_id_is_created_once_with_mode_0644_and_kept(tmp_path: Path) -> None:
    ws = capture(tmp_path / "ws")
    first = workspace_id(ws)
    path = ws / "cache" / "workspace-id"
    assert path.read_text() == f"{first}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert workspace_id(ws) == first
    assert [p.name for p in (ws / "cache").iterdir() if p.name.startswith(".")] == []


def test_concurrent_creators_agree_on_one_id(tmp_path: Path) -> None:
    ws = capture(tmp_path / "ws")
    code = (
        "import sys, time; from pathlib import Path\n"
        "from contexta_async_postgres import workspace_id\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start: pass\n"
        "print(workspace_id(Path(sys.argv[1])))\n"
    )
    import time

    start = str(time.time() + 1.0)  # all children spin until the same moment
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(ws), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    ids = {child.communicate(timeout=60)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    assert len(ids) == 1
    assert ids == {(ws / "cache" / "workspace-id").read_text().strip()}
    uuid.UUID(ids.pop())


def test_a_damaged_id_file_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    ws = capture(tmp_path / "ws")
    (ws / "cache" / "workspace-id").write_text("not-a-uuid\n")
    with pytest.raises(WorkspaceIdentityError, match="workspace-id: does not hold a UUID"):
        workspace_id(ws)


def test_the_capture_folder_names_its_workspace_and_other_folders_are_refused(
    tmp_path: Path,
) -> None:
    ws = capture(tmp_path / "ws")
    assert workspace_root(ws / "cache" / "capture") == ws
    with pytest.raises(ValidationError, match="workspace: must be a workspace directory"):
        workspace_root(tmp_path)
