"""Security: names never become paths, reading never executes anything, files get sensible
permissions, and an artifact is only ever read (hashed), never written."""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import contexta_async
from contexta_async import Contexta, LocalJsonlSink, ValidationError

from ._children.verify import FAMILY_FILES, read_family

HOSTILE_NAMES = ["../../escape", "/etc/passwd", "..", ".", "~root", "a/b\\c", "%2e%2e%2f", "$HOME"]


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_names_never_make_the_library_write_outside_the_workspace(
    tmp_path: Path, name: str
) -> None:
    workspace = tmp_path / "deep" / "ws"
    workspace.mkdir(parents=True)
    outside_before = _tree(tmp_path) - {str(p.relative_to(tmp_path)) for p in workspace.rglob("*")}
    if not any(ch.isalnum() for ch in name):  # ".." and "." normalise to nothing: refused
        with pytest.raises(ValidationError, match="letter or digit"):
            Contexta(workspace=workspace, config={"project_name": name})
        name = f"x{name}"
    with (
        Contexta(workspace=workspace, config={"project_name": name}) as ctx,
        ctx.run(name) as run,
        run.stage(name) as stage,
        stage.batch(name) as batch,
        batch.sample(name) as sample,
    ):
        sample.metric("m", 1, tags={name: name})
        sample.event("e", message=name, attributes={name: name})
        stage.register_artifact("model", workspace / "missing", allow_missing=True)
    # The only files: the family files, directly in <workspace>/cache/capture.
    inside = _tree(workspace)
    allowed = {*FAMILY_FILES, "record.index"}
    assert inside <= {"cache", "cache/capture"} | {f"cache/capture/{f}" for f in allowed}
    outside_after = _tree(tmp_path) - {f"deep/ws/{p}" for p in inside} - {"deep/ws"}
    assert outside_after == outside_before - {"deep/ws"}
    for line in read_family(workspace, "CONTEXT"):
        ref = line["payload_ref"]
        assert "/" not in ref and ".." not in ref and "\\" not in ref and "~" not in ref


@pytest.mark.parametrize("name", ["a\x00b", "\x00"])
def test_nul_bytes_in_names_are_refused(tmp_path: Path, name: str) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with pytest.raises(ValidationError, match="NUL"):
            ctx.run(name)
        with ctx.run("r") as run, pytest.raises(ValidationError, match="NUL"):
            run.stage(name)


def test_a_sink_only_writes_the_four_family_files(tmp_path: Path) -> None:
    sink = LocalJsonlSink(tmp_path, name="../../sink")
    for family in ("../RECORD", "record", "/etc/passwd", "RECORD\x00"):
        with pytest.raises(ValidationError):
            sink.file_path_for(family)
    assert {
        sink.file_path_for(f).name for f in ("CONTEXT", "RECORD", "ARTIFACT", "DEGRADATION")
    } == set(FAMILY_FILES)
    assert all(sink.file_path_for(f).parent == tmp_path for f in ("RECORD", "CONTEXT"))


@pytest.mark.parametrize(
    "text", ['"}\n{"family":"RECORD","forged":true}\n', "a\rb", "line\u2028sep\u2029", "\x1b[31m"]
)
def test_control_characters_cannot_forge_or_split_lines(tmp_path: Path, text: str) -> None:
    with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
    ):
        run.event("e", message=text, attributes={text: text})
        run.metric("m", 1, tags={"t": text})
    data = (tmp_path / "cache" / "capture" / "record.jsonl").read_bytes()
    assert data.count(b"\n") == 2  # two records, two lines
    event, metric = read_family(tmp_path, "RECORD")
    assert event["payload"]["payload"]["message"] == text
    assert event["payload"]["payload"]["attributes"] == {text: text}
    assert metric["payload"]["payload"]["tags"] == {"t": text}


# ---- reading never executes -----------------------------------------------------------------


class _Trap:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _hostile_lines(markers: Iterator[Path]) -> bytes:
    pickled = pickle.dumps(_Trap(next(markers)))
    yaml = f"!!python/object/apply:builtins.open ['{next(markers)}', 'w']".encode()
    jsonpickle = msgspec.json.encode(
        {"py/reduce": [{"py/function": "builtins.open"}, {"py/tuple": [str(next(markers)), "w"]}]}
    )
    dunder = msgspec.json.encode(
        {"family": "RECORD", "payload": {"__class__": "os.system", "__reduce__": "x"}}
    )
    return b"\n".join([pickled.replace(b"\n", b" "), yaml, jsonpickle, dunder]) + b"\n"


async def test_reading_and_appending_to_hostile_files_never_executes_or_unpickles(
    tmp_path: Path,
) -> None:
    from contexta_async.readers import ReaderError, Workspace

    markers = [tmp_path / f"marker-{i}" for i in range(4)]
    workspace = tmp_path / "ws"
    capture = workspace / "cache" / "capture"
    capture.mkdir(parents=True)
    for name in FAMILY_FILES:
        (capture / name).write_bytes(_hostile_lines(iter(markers)))
    trap = tmp_path / "model.pkl"
    trap.write_bytes(pickle.dumps(_Trap(markers[3])))

    async with (
        Contexta(workspace=workspace, config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
    ):
        await run.metric("m", 1)
        ref = await run.register_artifact("model", trap)  # read to hash it, nothing more
    reader = Workspace(workspace)
    try:
        runs = await reader.list_runs()
        assert any(summary.ref == "run:p.r" for summary in runs)
        async for _ in reader.records("run:p.r"):
            pass
    except ReaderError:
        pass  # refusing a hostile file is fine; executing it is not
    assert [m for m in markers if m.exists()] == []
    assert ref.startswith("artifact:p.r.model-")


FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRIBUTES = {
    ("os", "system"),
    ("os", "popen"),
    ("importlib", "import_module"),
    ("pickle", "load"),  # unpickling a file
    ("pickle", "loads"),
}
FORBIDDEN_MODULES = {
    "pickle",
    "marshal",
    "shelve",
    "yaml",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "subprocess",
}


def test_the_package_contains_no_code_that_could_execute_file_contents() -> None:
    """No eval/exec, no pickle or other unsafe loaders; file contents are only ever decoded as
    JSON."""
    root = Path(contexta_async.__file__).parent
    problems = []
    for source in sorted(root.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            where = f"{source.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                modules = []
            problems += [
                f"{where} imports {m}" for m in modules if m.split(".")[0] in FORBIDDEN_MODULES
            ]
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                problems.append(f"{where} calls {func.id}")
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in FORBIDDEN_ATTRIBUTES
            ):
                problems.append(f"{where} calls {func.value.id}.{func.attr}")
    assert problems == []


# ---- permissions and artifacts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_are_created_with_sensible_permissions_that_respect_the_umask(
    tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    previous = os.umask(umask)
    try:
        with (
            Contexta(workspace=tmp_path / "ws", config={"project_name": "p"}) as ctx,
            ctx.run("r") as run,
        ):
            run.metric("m", 1)
            ctx.flush()
    finally:
        os.umask(previous)
    capture = tmp_path / "ws" / "cache" / "capture"
    for directory in (tmp_path / "ws", tmp_path / "ws" / "cache", capture):
        assert stat.S_IMODE(directory.stat().st_mode) == dir_mode, directory
    for name in ("context.jsonl", "record.jsonl"):
        mode = stat.S_IMODE((capture / name).stat().st_mode)
        assert mode == file_mode, f"{name}: {oct(mode)}"
        assert not mode & (stat.S_IWOTH | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_an_artifact_is_hashed_never_written_and_a_symlink_is_only_read(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"\x00weights" * 1000)
    target.chmod(0o444)
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    before = {p: (p.read_bytes(), p.lstat()) for p in (target,)}
    listing = _tree(tmp_path)
    missing = tmp_path / "not-yet" / "model.bin"
    workspace = tmp_path / "ws"
    with (
        Contexta(workspace=workspace, config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
    ):
        run.register_artifact("model", target)
        run.register_artifact("model", link)
        run.register_artifact("model", f"{tmp_path}/ws/../weights.bin")
        run.register_artifact("model", missing, allow_missing=True)
    digest = hashlib.sha256(before[target][0]).hexdigest()
    data, info = before[target]
    assert target.read_bytes() == data
    assert target.stat().st_mtime_ns == info.st_mtime_ns and target.stat().st_mode == info.st_mode
    assert not missing.exists() and not missing.parent.exists()  # never created
    assert _tree(tmp_path) - listing <= {"ws"} | {f"ws/{p}" for p in _tree(workspace)}
    manifests = [line["payload"]["manifest"] for line in read_family(workspace, "ARTIFACT")]
    assert [m["hash_value"] for m in manifests] == [digest, digest, digest, None]
    assert manifests[2]["location_ref"] == f"path:{target}"  # normalised, not followed
    assert manifests[1]["location_ref"] == f"path:{link}"


def test_a_symlink_planted_at_a_capture_file_is_never_written_through(tmp_path: Path) -> None:
    from contexta_async import DeliveryError

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    capture = tmp_path / "ws" / "cache" / "capture"
    capture.mkdir(parents=True)
    (capture / "record.jsonl").symlink_to(victim)
    ctx = Contexta(workspace=tmp_path / "ws", max_retries=0)
    with ctx.run("r") as run:
        run.metric("x", 1)
    with pytest.raises(DeliveryError, match=r"record\.jsonl") as caught:
        ctx.close()
    assert caught.value.runs == {"run:default.r": 1}
    assert victim.read_text() == "precious\n"
