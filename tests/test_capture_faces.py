"""The two faces of the capture API: plain `with` and `async with`, over one implementation."""

from __future__ import annotations

import inspect
import sys
import threading
from pathlib import Path

import anyio
import pytest

from contexta_async import (
    AsyncBatch,
    AsyncRun,
    AsyncSample,
    AsyncStage,
    Batch,
    ClosedScopeError,
    Contexta,
    DuplicateScopeError,
    LocalJsonlSink,
    Run,
    Sample,
    Stage,
    ValidationError,
)

from .capture_files import last_status, metrics, read_lines


def test_sync_face_captures_seed_style_without_an_event_loop(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "iris-svm"})
    local_sink = next(sink for sink in ctx.sinks if isinstance(sink, LocalJsonlSink))
    with ctx.run("linear-svm", dataset_ref="dataset:sklearn.iris") as run:
        assert isinstance(run, Run)
        with run.stage("evaluate") as stage:
            stage.metric("pass.rate", 0.5, unit="ratio")
            with stage.batch("holdout-split") as batch:
                batch.metric("accuracy", 0.978, unit="ratio")
                with batch.sample("first-prediction") as sample:
                    assert isinstance(sample, Sample)
                    sample.metric("correct", 1.0, unit="ratio")
        assert run.ref == "run:iris-svm.linear-svm"
        assert stage.ref == "stage:iris-svm.linear-svm.evaluate"
        assert batch.ref == "batch:iris-svm.linear-svm.evaluate.holdout-split"
        assert sample.ref == "sample:iris-svm.linear-svm.evaluate.holdout-split.first-prediction"
    ctx.close()
    assert local_sink.file_path_for("RECORD") == workspace.absolute() / "cache/capture/record.jsonl"
    lines = metrics(workspace)
    assert [line["payload"]["payload"]["metric_key"] for line in lines] == [
        "pass.rate",
        "accuracy",
        "correct",
    ]
    envelope = lines[2]["payload"]["envelope"]
    assert envelope["sample_observation_ref"] == sample.ref
    assert envelope["batch_execution_ref"] == batch.ref
    assert envelope["stage_execution_ref"] == stage.ref
    assert envelope["run_ref"] == run.ref
    assert lines[2]["payload"]["payload"]["subject_ref"] == sample.ref
    assert last_status(workspace) == {
        run.ref: "completed",
        stage.ref: "completed",
        batch.ref: "completed",
        sample.ref: "completed",
    }


async def test_async_face_awaits_captures_inside_an_owned_context(workspace: Path) -> None:
    async with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx:
        async with ctx.run("r") as run:
            assert isinstance(run, AsyncRun)
            async with run.stage("evaluate") as stage, stage.sample("case-1") as sample:
                assert isinstance(sample, AsyncSample)
                await sample.metric("correct", 1.0)
                await sample.event("judge.note", message="looks right", level="debug")
            await ctx.aflush()
            # flush is a barrier: the lines are in the file before the context closes
            keys = [line["payload"]["payload"]["metric_key"] for line in metrics(workspace)]
            assert keys == ["correct"]
    events = [
        line
        for line in read_lines(workspace, "RECORD")
        if line["payload_type"] == "StructuredEventRecord"
    ]
    assert events[0]["payload"]["payload"]["message"] == "looks right"
    assert last_status(workspace)["run:p.r"] == "completed"


async def test_async_runs_work_without_entering_the_context(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})

    async def one_run(name: str) -> None:
        async with ctx.run(name) as run, run.stage("evaluate") as stage:
            for i in range(20):
                async with stage.sample(f"case-{i}") as sample:
                    await sample.metric("correct", float(i % 2))

    async with anyio.create_task_group() as tg:
        for name in ("alpha", "beta", "gamma"):
            tg.start_soon(one_run, name)
    await ctx.aflush()
    assert len(metrics(workspace)) == 60
    await ctx.aclose()
    status = last_status(workspace)
    assert {status[f"run:p.{n}"] for n in ("alpha", "beta", "gamma")} == {"completed"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_scope_can_be_entered_async_from_a_sync_created_opening(
    workspace: Path, backend: str
) -> None:
    ctx = Contexta(workspace=workspace)
    opening = ctx.run("mixed")
    assert opening.ref == "run:default.mixed"

    async def main() -> None:
        async with opening as run:
            await run.metric("score", 3)

    anyio.run(main, backend=backend)
    ctx.close()
    [line] = metrics(workspace)
    assert line["payload"]["payload"]["value"] == 3
    assert line["payload"]["payload"]["value_type"] == "int"


def test_sync_face_works_from_several_threads_at_once(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, queue_size=64)

    def worker(n: int) -> None:
        with ctx.run(f"thread-{n}") as run, run.stage("s") as stage:
            for i in range(500):
                stage.metric("step.value", i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctx.close()
    lines = metrics(workspace)
    assert len(lines) == 2000
    assert len({line["payload_ref"] for line in lines}) == 2000


async def test_five_hundred_concurrent_samples_each_land_exactly_once(workspace: Path) -> None:
    async with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx:
        async with ctx.run("many") as run, run.stage("evaluate") as stage:

            async def evaluate(i: int) -> None:
                async with stage.sample(f"case-{i}") as sample:
                    await anyio.sleep(0.001 * (i % 7))
                    await sample.metric("correct", float(i % 2))
                    await sample.metric("latency.ms", i * 0.5, unit="ms")
                    await sample.metric("completion.tokens", i)

            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(evaluate, i)
    lines = metrics(workspace)
    assert len(lines) == 1500
    seen = {
        (
            line["payload"]["envelope"]["sample_observation_ref"],
            line["payload"]["payload"]["metric_key"],
        )
        for line in lines
    }
    assert len(seen) == 1500
    assert len({line["payload_ref"] for line in lines}) == 1500
    for i in (0, 257, 499):
        ref = f"sample:p.many.evaluate.case-{i}"
        assert (ref, "completion.tokens") in seen
    status = last_status(workspace)
    assert (
        sum(1 for ref, s in status.items() if ref.startswith("sample:") and s == "completed") == 500
    )


def test_leaving_a_scope_by_an_exception_marks_it_failed(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with pytest.raises(ZeroDivisionError), ctx.run("boom") as run, run.stage("train"):
        _ = 1 / 0
    assert run.status == "failed"
    ctx.close()
    lines = [line["payload"] for line in read_lines(workspace, "CONTEXT")]
    final_run = [p for p in lines if p.get("run_ref") == "run:default.boom" and "name" in p][-1]
    assert final_run["status"] == "failed"
    assert final_run["failure_reason"] == "ZeroDivisionError: division by zero"
    assert final_run["ended_at"] is not None
    assert last_status(workspace)["stage:default.boom.train"] == "failed"


async def test_a_cancelled_task_closes_its_sample_and_stage_as_cancelled(workspace: Path) -> None:
    async with Contexta(workspace=workspace) as ctx:
        async with ctx.run("r") as run:
            with anyio.move_on_after(0.05):
                async with run.stage("slow") as stage, stage.sample("case") as sample:
                    await sample.metric("started", 1)
                    await anyio.sleep(10)
            assert sample.status == "cancelled"
            assert stage.status == "cancelled"
    status = last_status(workspace)
    assert status["sample:default.r.slow.case"] == "cancelled"
    assert status["stage:default.r.slow"] == "cancelled"
    assert status["run:default.r"] == "completed"


def test_closing_a_parent_closes_its_open_children(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run:
        stage = run.stage("left-open").__enter__()
        sample = stage.sample("s").__enter__()
    assert stage.status == "completed"
    assert sample.status == "completed"
    with pytest.raises(ClosedScopeError):
        sample.metric("late", 1.0)
    ctx.close()
    assert last_status(workspace)["sample:default.r.left-open.s"] == "completed"


def test_a_second_open_run_with_the_same_ref_is_refused(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("dup"):
        with pytest.raises(DuplicateScopeError, match=r"run:default\.dup"), ctx.run("DUP"):
            pass
    # once closed, the name can be used again (a new execution of the same run)
    with ctx.run("dup") as again:
        again.metric("x", 1)
    ctx.close()
    assert len(metrics(workspace)) == 1


def test_capture_on_a_closed_scope_or_context_raises(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run:
        pass
    with pytest.raises(ClosedScopeError):
        run.metric("x", 1.0)
    ctx.close()
    ctx.close()  # idempotent
    with pytest.raises(ClosedScopeError):
        ctx.run("after")


async def test_aclose_is_idempotent_and_closes_open_runs_as_cancelled(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    run = await ctx.run("forgotten").__aenter__()
    await run.metric("x", 1.0)
    await ctx.aclose()
    await ctx.aclose()
    assert run.status == "cancelled"
    assert last_status(workspace)["run:default.forgotten"] == "cancelled"
    assert len(metrics(workspace)) == 1


def test_artifacts_are_hashed_and_bound(workspace: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights" * 1000)
    ctx = Contexta(workspace=workspace, config={"project_name": "iris-svm"})
    with ctx.run("linear-svm") as run:
        ref = run.register_artifact("model", str(model), attributes={"candidate": "linear-svm"})
        pending = run.register_artifact("model_card", tmp_path / "later.md", allow_missing=True)
    ctx.close()
    import hashlib

    bound, later = (line["payload"] for line in read_lines(workspace, "ARTIFACT"))
    assert ref.startswith("artifact:iris-svm.linear-svm.model-")
    assert bound["binding_status"] == "BOUND"
    assert bound["manifest"]["hash_value"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert bound["manifest"]["size_bytes"] == 7000
    assert bound["manifest"]["location_ref"] == f"path:{model}"
    assert bound["manifest"]["attributes"] == {"candidate": "linear-svm"}
    assert pending.startswith("artifact:iris-svm.linear-svm.model-card-")
    assert later["binding_status"] == "PENDING"
    assert later["manifest"]["hash_value"] is None


async def test_async_artifact_hashing_runs_off_the_event_loop(
    workspace: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (8 * 1024 * 1024))
    loop_thread = threading.get_ident()
    seen_threads: list[int] = []
    import contexta_async._scopes as scopes

    real = scopes.inspect_artifact

    def spy(*args: object, **kwargs: object) -> object:
        seen_threads.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    scopes.inspect_artifact = spy  # type: ignore[assignment]
    try:
        async with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
            await run.register_artifact("blob", big)
    finally:
        scopes.inspect_artifact = real
    assert seen_threads and loop_thread not in seen_threads
    [line] = read_lines(workspace, "ARTIFACT")
    assert line["payload"]["manifest"]["size_bytes"] == 8 * 1024 * 1024


def test_a_refused_scope_leaves_nothing_behind(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run:
        stage = run.stage("s").__enter__()
        with pytest.raises(DuplicateScopeError):
            run.stage("S").__enter__()
        stage.close()
        # the refused stage was never attached: the same name opens cleanly now
        with run.stage("s") as again:
            again.metric("x", 1)
    ctx.close()
    assert [
        line["payload"]["status"]
        for line in read_lines(workspace, "CONTEXT")
        if line["payload_ref"] == "stage:default.r.s"
    ] == ["open", "completed"] * 2


def test_a_child_of_a_closed_scope_cannot_open(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run:
        stage_opening = run.stage("late")
    with pytest.raises(ClosedScopeError), stage_opening:
        pass
    with ctx.run("r"):  # the refused child did not keep a ref open
        pass
    ctx.close()


async def test_sync_face_inside_an_entered_async_context_never_deadlocks(workspace: Path) -> None:
    # The writer is its own thread, so even the sync face on the event loop's thread, with a
    # full queue, only waits for room; it used to deadlock when the writer ran in this loop.
    async with Contexta(workspace=workspace, queue_size=4, max_batch_size=4) as ctx:
        with ctx.run("sync-in-async") as run:
            for i in range(200):
                run.metric("x", i)
        await ctx.aflush()
    assert [m["payload"]["payload"]["value"] for m in metrics(workspace)] == list(range(200))


@pytest.mark.parametrize(
    ("sync_face", "async_face"),
    [(Run, AsyncRun), (Stage, AsyncStage), (Batch, AsyncBatch), (Sample, AsyncSample)],
)
def test_both_faces_offer_the_same_methods_with_the_same_parameters(
    sync_face: type, async_face: type
) -> None:
    def public(face: type) -> list[str]:
        return sorted(name for name in dir(face) if not name.startswith("_"))

    assert public(sync_face) == public(async_face)
    for name in public(sync_face):
        sync_member, async_member = getattr(sync_face, name), getattr(async_face, name)
        assert sync_member.__doc__ and async_member.__doc__, name
        if callable(sync_member):
            sync_params = inspect.signature(sync_member, eval_str=True).parameters
            async_params = inspect.signature(async_member, eval_str=True).parameters
            assert sync_params == async_params, name
    # The *_nowait variants never wait on either face: one definition serves both.
    for name in ("metric_nowait", "event_nowait"):
        assert getattr(sync_face, name) is getattr(async_face, name)
        assert inspect.signature(getattr(sync_face, name), eval_str=True).return_annotation is None


def test_a_sample_records_its_cluster_and_epoch_on_its_context_lines(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    with ctx.run("r") as run, run.stage("evaluate") as stage:
        for epoch in (1, 2):
            with stage.sample("case-1", cluster="passage-7", epoch=epoch) as sample:
                assert sample.ref == f"sample:p.r.evaluate.case-1-epoch-{epoch}"
                sample.metric("correct", 1.0)
        with stage.batch("b") as batch, batch.sample("case-2") as plain:
            plain.metric("correct", 0.0)
    ctx.close()
    lines = [
        line["payload"]
        for line in read_lines(workspace, "CONTEXT")
        if line["payload_type"] == "SampleObservation"
    ]
    attempts = [p for p in lines if p["sample_name"] == "case-1"]
    assert [(p["cluster"], p["epoch"], p["status"]) for p in attempts] == [
        ("passage-7", 1, "open"),
        ("passage-7", 1, "completed"),
        ("passage-7", 2, "open"),
        ("passage-7", 2, "completed"),
    ]
    # Not given: not written (the line Contexta 1.0's model describes).
    plain_lines = [p for p in lines if p["sample_name"] == "case-2"]
    assert plain_lines and all("cluster" not in p and "epoch" not in p for p in plain_lines)
    # The written keys stay sorted, as in every other line.
    assert all(list(p) == sorted(p) for p in lines)


async def test_the_async_face_takes_cluster_and_epoch_too(workspace: Path) -> None:
    async with Contexta(workspace=workspace, config={"project_name": "p"}) as ctx:
        async with ctx.run("r") as run, run.stage("s") as stage:
            async with stage.batch("b") as batch:
                async with batch.sample("q", cluster="c", epoch=3) as sample:
                    assert sample.ref == "sample:p.r.s.b.q-epoch-3"
    payloads = [
        line["payload"]
        for line in read_lines(workspace, "CONTEXT")
        if line["payload_type"] == "SampleObservation"
    ]
    assert {(p["cluster"], p["epoch"]) for p in payloads} == {("c", 3)}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cluster": ""}, "cluster"),
        ({"cluster": "  "}, "cluster"),
        ({"cluster": 7}, "cluster"),
        ({"cluster": "x" * 256}, "cluster"),
        ({"cluster": "a\x00b"}, "cluster"),
        ({"cluster": "\udc80"}, "cluster"),
        ({"epoch": 0}, "epoch"),
        ({"epoch": -1}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"epoch": 1.0}, "epoch"),
        ({"epoch": "2"}, "epoch"),
    ],
)
def test_a_bad_cluster_or_epoch_raises_a_validation_error_naming_it(
    workspace: Path, kwargs: dict[str, object], field: str
) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run, run.stage("s") as stage:
        with pytest.raises(ValidationError) as raised:
            stage.sample("case", **kwargs)  # type: ignore[arg-type]
        assert raised.value.field == field
    ctx.close()


def test_two_different_samples_never_share_a_ref(workspace: Path) -> None:
    # "q" with epoch=2 is written as sample ...q-epoch-2: a sample named "q-epoch-2" with no
    # epoch would share its ref (and its records' sample_observation_ref) while the readers
    # count it as another item, so such a name is refused at the call.
    ctx = Contexta(workspace=workspace, config={"project_name": "p"})
    with ctx.run("r") as run, run.stage("s") as stage:
        with stage.sample("q", epoch=2) as attempt:
            attempt.metric("score", 1.0)
        for name in ("q-epoch-2", "Q Epoch 2", "q-epoch-10"):
            with pytest.raises(ValidationError) as raised:
                stage.sample(name)
            assert raised.value.field == "sample name"
            assert "-epoch-<k>" in raised.value.rule
        # Nothing an attempt's ref ends in, or an attempt of its own: accepted, each its own ref.
        refs = {attempt.ref}
        for name, epoch in (
            ("q-epoch-02", None),
            ("q-epoch-0", None),
            ("epoch-2", None),
            ("q-epoch", None),
            ("q-epoch-2", 3),
            ("q-epoch-2-epoch", 2),
        ):
            with stage.sample(name, epoch=epoch) as sample:
                sample.metric("score", 0.0)
                refs.add(sample.ref)
        assert len(refs) == 7
    ctx.close()
    assert "sample:p.r.s.q-epoch-2-epoch-3" in refs
    captured = [m["payload"]["envelope"]["sample_observation_ref"] for m in metrics(workspace)]
    assert sorted(captured) == sorted(refs)


def test_a_name_that_fits_only_without_the_epoch_suffix_is_refused(workspace: Path) -> None:
    ctx = Contexta(workspace=workspace)
    with ctx.run("r") as run, run.stage("s") as stage:
        with stage.sample("n" * 55, epoch=1):  # exactly 63 characters: fine
            pass
        with pytest.raises(ValidationError) as raised:
            stage.sample("n" * 56, epoch=1)
        assert raised.value.field == "sample name"
        with pytest.raises(ValidationError) as raised:
            stage.sample("n" * 50, epoch=10**9)
        assert raised.value.field == "sample name"
    ctx.close()


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [(0, "completed", None), (None, "completed", None), (2, "failed", "SystemExit: 2")],
)
def test_sys_exit_inside_a_run_closes_it_with_the_status_its_code_means(
    tmp_path: Path, code: int | None, status: str, reason: str | None
) -> None:
    ctx = Contexta(workspace=tmp_path / "ws", config={"project_name": "p"})
    with pytest.raises(SystemExit), ctx.run("r") as run, run.stage("s"):
        sys.exit(code)
    ctx.close()
    closing = [
        line["payload"]
        for line in read_lines(tmp_path / "ws", "context")
        if line["payload"]["status"] != "open"
    ]
    assert [(line["status"], line["failure_reason"]) for line in closing] == [(status, reason)] * 2
