"""Bad input: every kind of invalid argument gets a typed error naming the field, at the call,
and the records captured around it are unaffected. Limits on size and nesting are enforced
with clear errors (never a RecursionError, a hang or a half-written line)."""

from __future__ import annotations

import decimal
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contexta_async import (
    ConfigurationError,
    Contexta,
    DeliveryError,
    LocalJsonlSink,
    MemorySink,
    ValidationError,
)
from contexta_async.sinks import Chunk

from ._children.verify import read_family

_SURROGATE = "x \ud800"  # a lone surrogate: a str Python holds but UTF-8 cannot encode
_SURROGATE_FILE = os.fsdecode(b"model-\xff.bin")  # -> "model-\udcff.bin"


def _file(path: Path) -> Path:
    path.write_bytes(b"weights")
    return path


def _deep(levels: int) -> dict[str, Any]:
    """A mapping nested ``levels`` deep, built without recursion."""
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels - 1):
        node["d"] = {}
        node = node["d"]
    return root


def _cyclic() -> dict[str, Any]:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    return cycle


# ---- options -------------------------------------------------------------------------------

OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("workspace-empty", {"workspace": ""}, "workspace"),
    ("workspace-int", {"workspace": 5}, "workspace"),
    ("config-list", {"config": [("project_name", "p")]}, "config"),
    ("sinks-empty", {"sinks": []}, "sinks"),
    ("sinks-not-sink", {"sinks": [object()]}, "sinks"),
    ("sinks-same-name", {"sinks": [MemorySink(), MemorySink()]}, "sinks"),
    ("queue_size-zero", {"queue_size": 0}, "queue_size"),
    ("queue_size-negative", {"queue_size": -1}, "queue_size"),
    ("queue_size-str", {"queue_size": "10"}, "queue_size"),
    ("queue_size-float", {"queue_size": 1.5}, "queue_size"),
    ("queue_size-bool", {"queue_size": True}, "queue_size"),
    ("max_batch_size-zero", {"max_batch_size": 0}, "max_batch_size"),
    ("fsync-str", {"fsync": "yes"}, "fsync"),
    ("overflow-unknown", {"overflow": "drop"}, "overflow"),
    ("shutdown_timeout-negative", {"shutdown_timeout": -1}, "shutdown_timeout"),
    ("shutdown_timeout-nan", {"shutdown_timeout": float("nan")}, "shutdown_timeout"),
    ("shutdown_timeout-str", {"shutdown_timeout": "1"}, "shutdown_timeout"),
    ("max_retries-negative", {"max_retries": -1}, "max_retries"),
    ("max_retries-float", {"max_retries": 1.0}, "max_retries"),
    ("retry_backoff-negative", {"retry_backoff": -0.1}, "retry_backoff"),
]


@pytest.mark.parametrize(
    ("options", "field"), [c[1:] for c in OPTIONS], ids=[c[0] for c in OPTIONS]
)
def test_an_invalid_option_raises_configuration_error_naming_it(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    arguments = {"workspace": tmp_path, "config": {"project_name": "p"}, **options}
    with pytest.raises(ConfigurationError) as caught:
        Contexta(**arguments)
    assert caught.value.field == field and field in str(caught.value)
    assert not (tmp_path / "cache").exists()  # nothing was created


@pytest.mark.parametrize(
    ("project_name", "rule"),
    [("", "blank"), ("!!!", "letter or digit"), (5, "string"), ("a\x00b", "NUL")],
)
def test_an_invalid_project_name_is_rejected_naming_the_config_key(
    tmp_path: Path, project_name: Any, rule: str
) -> None:
    with pytest.raises(ValidationError, match=rule) as caught:
        Contexta(workspace=tmp_path, config={"project_name": project_name})
    assert caught.value.field == "config.project_name"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"storage_root": 5}, "storage_root"),
        ({"storage_root": ".", "name": " "}, "name"),
        ({"storage_root": ".", "index": "yes"}, "index"),
    ],
)
def test_an_invalid_sink_option_raises_configuration_error(
    arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LocalJsonlSink(**arguments)
    assert caught.value.field == field


# ---- captured values -----------------------------------------------------------------------

Call = Callable[[Any, Any, Any, Path], object]

CASES: list[tuple[str, Call, str]] = [
    # names of runs, stages, batches and samples
    ("run-name-int", lambda ctx, st, s, p: ctx.run(5), "run name"),
    ("run-name-blank", lambda ctx, st, s, p: ctx.run("   "), "run name"),
    ("run-name-nul", lambda ctx, st, s, p: ctx.run("a\x00b"), "run name"),
    ("run-name-punctuation", lambda ctx, st, s, p: ctx.run("!?!"), "run name"),
    ("run-name-huge", lambda ctx, st, s, p: ctx.run("x" * 10_000_000), "run name"),
    ("run-name-too-long-ref", lambda ctx, st, s, p: ctx.run("x" * 64), "run name"),
    ("stage-name-blank", lambda ctx, st, s, p: st.batch(""), "batch name"),
    ("sample-name-nul", lambda ctx, st, s, p: st.sample("\x00"), "sample name"),
    ("sample-name-epoch-suffix", lambda ctx, st, s, p: st.sample("q-epoch-2"), "sample name"),
    (
        "sample-ref-over-255",
        lambda ctx, st, s, p: (
            ctx.run("r" * 63)
            .__enter__()
            .stage("s" * 63)
            .__enter__()
            .batch("b" * 63)
            .__enter__()
            .sample("c" * 63)
        ),
        "sample name",
    ),
    # run fields
    ("dataset_ref", lambda ctx, st, s, p: ctx.run("x", dataset_ref="iris"), "dataset_ref"),
    ("run-tags", lambda ctx, st, s, p: ctx.run("x", tags={"k": ""}), "tags['k']"),
    ("metadata", lambda ctx, st, s, p: ctx.run("x", metadata={"a": {1}}), "metadata['a']"),
    ("code_revision", lambda ctx, st, s, p: ctx.run("x", code_revision=" "), "code_revision"),
    # metric keys and values
    ("key-int", lambda ctx, st, s, p: s.metric(5, 1.0), "key"),
    ("key-blank", lambda ctx, st, s, p: s.metric(" ", 1.0), "key"),
    ("key-upper", lambda ctx, st, s, p: s.metric("Bad Key", 1.0), "key"),
    ("key-empty-part", lambda ctx, st, s, p: s.metric("a..b", 1.0), "key"),
    ("key-digit", lambda ctx, st, s, p: s.metric("1abc", 1.0), "key"),
    ("key-newline", lambda ctx, st, s, p: s.metric("a\nb", 1.0), "key"),
    ("key-256", lambda ctx, st, s, p: s.metric("k" * 256, 1.0), "key"),
    ("value-nan", lambda ctx, st, s, p: s.metric("m", float("nan")), "value"),
    ("value-inf", lambda ctx, st, s, p: s.metric("m", float("-inf")), "value"),
    ("value-bool", lambda ctx, st, s, p: s.metric("m", True), "value"),
    ("value-str", lambda ctx, st, s, p: s.metric("m", "1"), "value"),
    ("value-none", lambda ctx, st, s, p: s.metric("m", None), "value"),
    ("value-int-65-bits", lambda ctx, st, s, p: s.metric("m", 2**64), "value"),
    ("value-decimal", lambda ctx, st, s, p: s.metric("m", decimal.Decimal("0.1")), "value"),
    ("value-complex", lambda ctx, st, s, p: s.metric("m", 1j), "value"),
    ("value-list", lambda ctx, st, s, p: s.metric("m", [1]), "value"),
    ("unit-blank", lambda ctx, st, s, p: s.metric("m", 1, unit=""), "unit"),
    ("unit-256", lambda ctx, st, s, p: s.metric("m", 1, unit="u" * 256), "unit"),
    ("unit-nul", lambda ctx, st, s, p: s.metric("m", 1, unit="a\x00"), "unit"),
    ("scope", lambda ctx, st, s, p: s.metric("m", 1, aggregation_scope="x"), "aggregation_scope"),
    ("basis", lambda ctx, st, s, p: s.metric("m", 1, summary_basis=" "), "summary_basis"),
    # tags
    ("tags-str", lambda ctx, st, s, p: s.metric("m", 1, tags="a=b"), "tags"),
    ("tags-int-key", lambda ctx, st, s, p: s.metric("m", 1, tags={1: "a"}), "tags key"),
    ("tags-int-value", lambda ctx, st, s, p: s.metric("m", 1, tags={"k": 1}), "tags['k']"),
    ("tags-blank-key", lambda ctx, st, s, p: s.metric("m", 1, tags={"": "v"}), "tags key"),
    (
        "tags-65",
        lambda ctx, st, s, p: s.metric("m", 1, tags={f"{i}": "v" for i in range(65)}),
        "tags",
    ),
    ("tags-long", lambda ctx, st, s, p: s.metric("m", 1, tags={"k": "v" * 1025}), "tags['k']"),
    ("tags-nul", lambda ctx, st, s, p: s.metric("m", 1, tags={"k": "\x00"}), "tags['k']"),
    # events
    ("message-blank", lambda ctx, st, s, p: s.event("e", message=" "), "message"),
    ("message-int", lambda ctx, st, s, p: s.event("e", message=5), "message"),
    ("message-huge", lambda ctx, st, s, p: s.event("e", message="x" * 10_000_000), "message"),
    ("message-nul", lambda ctx, st, s, p: s.event("e", message="a\x00"), "message"),
    ("level", lambda ctx, st, s, p: s.event("e", message="m", level="fatal"), "level"),
    ("event-key", lambda ctx, st, s, p: s.event("E", message="m"), "key"),
    # attributes
    ("attrs-list", lambda ctx, st, s, p: s.event("e", message="m", attributes=[1]), "attributes"),
    (
        "attrs-int-key",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={1: 2}),
        "attributes",
    ),
    (
        "attrs-set",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": {1}}),
        "attributes['a']",
    ),
    (
        "attrs-bytes",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": b"x"}),
        "attributes['a']",
    ),
    (
        "attrs-nan",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": [float("nan")]}),
        "attributes['a'][0]",
    ),
    (
        "attrs-huge-string",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": "x" * 65_537}),
        "attributes['a']",
    ),
    (
        "attrs-17-deep",
        lambda ctx, st, s, p: s.event("e", message="m", attributes=_deep(17)),
        "attributes" + "['d']" * 16,
    ),
    (
        "attrs-100000-deep",
        lambda ctx, st, s, p: s.event("e", message="m", attributes=_deep(100_000)),
        "attributes" + "['d']" * 16,
    ),
    (
        "attrs-cycle",
        lambda ctx, st, s, p: s.event("e", message="m", attributes=_cyclic()),
        "attributes" + "['self']" * 16,
    ),
    (
        "attrs-10001-values",
        # the mapping, the list and 9,999 numbers: one value over the limit
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": list(range(9_999))}),
        "attributes['a'][9998]",
    ),
    # artifacts
    ("kind-upper", lambda ctx, st, s, p: st.register_artifact("Model", p), "kind"),
    ("kind-traversal", lambda ctx, st, s, p: st.register_artifact("../x", p), "kind"),
    ("kind-64", lambda ctx, st, s, p: st.register_artifact("k" * 64, p), "kind"),
    ("path-bytes", lambda ctx, st, s, p: st.register_artifact("model", os.fsencode(p)), "path"),
    ("path-blank", lambda ctx, st, s, p: st.register_artifact("model", " "), "path"),
    ("path-nul", lambda ctx, st, s, p: st.register_artifact("model", f"{p}\x00x"), "path"),
    ("path-int", lambda ctx, st, s, p: st.register_artifact("model", 5), "path"),
    ("path-missing", lambda ctx, st, s, p: st.register_artifact("model", p / "nope"), "path"),
    ("path-directory", lambda ctx, st, s, p: st.register_artifact("model", p.parent), "path"),
    ("path-device", lambda ctx, st, s, p: st.register_artifact("model", "/dev/zero"), "path"),
    (
        "artifact-attrs",
        lambda ctx, st, s, p: st.register_artifact("model", p, attributes={"a": object()}),
        "attributes['a']",
    ),
    # strings UTF-8 cannot encode (a lone surrogate), in every string-bearing argument
    ("run-name-surrogate", lambda ctx, st, s, p: ctx.run(f"r {_SURROGATE}"), "run name"),
    ("stage-name-surrogate", lambda ctx, st, s, p: st.batch(_SURROGATE), "batch name"),
    ("sample-name-surrogate", lambda ctx, st, s, p: st.sample(f"é{_SURROGATE}"), "sample name"),
    ("key-surrogate", lambda ctx, st, s, p: s.metric(f"m{_SURROGATE}", 1), "key"),
    ("unit-surrogate", lambda ctx, st, s, p: s.metric("m", 1, unit=_SURROGATE), "unit"),
    (
        "basis-surrogate",
        lambda ctx, st, s, p: s.metric("m", 1, summary_basis=_SURROGATE),
        "summary_basis",
    ),
    (
        "tag-key-surrogate",
        lambda ctx, st, s, p: s.metric("m", 1, tags={_SURROGATE: "v"}),
        "tags key",
    ),
    (
        "tag-value-surrogate",
        lambda ctx, st, s, p: s.metric("m", 1, tags={"k": _SURROGATE}),
        "tags['k']",
    ),
    ("event-key-surrogate", lambda ctx, st, s, p: s.event(_SURROGATE, message="m"), "key"),
    ("message-surrogate", lambda ctx, st, s, p: s.event("e", message=_SURROGATE), "message"),
    ("level-surrogate", lambda ctx, st, s, p: s.event("e", message="m", level=_SURROGATE), "level"),
    (
        "attrs-key-surrogate",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": {_SURROGATE: 1}}),
        "attributes['a']",
    ),
    (
        "attrs-value-surrogate",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": [{"b": _SURROGATE}]}),
        "attributes['a'][0]['b']",
    ),
    (
        "metadata-key-surrogate",
        lambda ctx, st, s, p: ctx.run("x", metadata={_SURROGATE: 1}),
        "metadata",
    ),
    (
        "metadata-value-surrogate",
        lambda ctx, st, s, p: ctx.run("x", metadata={"a": _SURROGATE}),
        "metadata['a']",
    ),
    (
        "code_revision-surrogate",
        lambda ctx, st, s, p: ctx.run("x", code_revision=_SURROGATE),
        "code_revision",
    ),
    (
        "dataset_ref-surrogate",
        lambda ctx, st, s, p: ctx.run("x", dataset_ref=f"dataset:a{_SURROGATE}"),
        "dataset_ref",
    ),
    ("kind-surrogate", lambda ctx, st, s, p: st.register_artifact(_SURROGATE, p), "kind"),
    (
        "path-surrogate",  # what os.fsdecode makes of a file name that is not UTF-8
        lambda ctx, st, s, p: st.register_artifact("model", _file(p.parent / _SURROGATE_FILE)),
        "path",
    ),
    (
        "artifact-attrs-surrogate",
        lambda ctx, st, s, p: st.register_artifact("model", p, attributes={"a": _SURROGATE}),
        "attributes['a']",
    ),
    # NUL everywhere, nested too
    (
        "attrs-key-nul",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a\x00": 1}),
        "attributes",
    ),
    (
        "attrs-value-nul",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": "b\x00"}),
        "attributes['a']",
    ),
    (
        "attrs-nested-value-nul",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"a": [{"b": ["\x00"]}]}),
        "attributes['a'][0]['b'][0]",
    ),
    (
        "metadata-nested-key-nul",
        lambda ctx, st, s, p: ctx.run("x", metadata={"a": {"\x00": 1}}),
        "metadata['a']",
    ),
    # sizes: keys, the text of one mapping in all, and error text bounded
    (
        "attrs-key-1025",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"k" * 1025: 1}),
        "attributes",
    ),
    (
        "attrs-key-10-mb",
        lambda ctx, st, s, p: s.event("e", message="m", attributes={"k" * 10_000_000: 1}),
        "attributes",
    ),
    (
        "metadata-key-1025",
        lambda ctx, st, s, p: ctx.run("x", metadata={"a": {"k" * 1025: 1}}),
        "metadata['a']",
    ),
    (
        "attrs-text-over-budget",
        # 8 strings of 65,536 characters: 524,288 of text, plus the key "a": one over
        lambda ctx, st, s, p: s.event(
            "e", message="m", attributes={"a": ["x" * 65_536 for _ in range(8)]}
        ),
        "attributes['a'][7]",
    ),
]


@pytest.mark.parametrize(("call", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_raises_a_typed_error_naming_the_field_and_harms_nothing_around_it(
    tmp_path: Path, call: Call, field: str
) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    workspace = tmp_path / "ws"
    with (
        Contexta(workspace=workspace, config={"project_name": "p"}) as ctx,
        ctx.run("good") as run,
        run.stage("s") as stage,
        stage.sample("c") as sample,
    ):
        sample.metric("before", 1)
        with pytest.raises(ValidationError) as caught:
            call(ctx, stage, sample, artifact)
        sample.metric("after", 2)
        stage.register_artifact("model", artifact)
    error = caught.value
    assert type(error) is ValidationError  # typed, not a bare ValueError/TypeError
    assert error.field == field, str(error)
    assert str(error).startswith(f"{field}: ") and error.rule in str(error)
    assert len(str(error)) < 400  # a huge value is abbreviated, not echoed

    metrics = [
        (line["payload"]["payload"]["metric_key"], line["payload"]["payload"]["value"])
        for line in read_family(workspace, "RECORD")
        if line["payload"]["envelope"]["run_ref"] == "run:p.good"
    ]
    assert metrics == [("before", 1), ("after", 2)]
    assert len(read_family(workspace, "ARTIFACT")) == 1
    assert read_family(workspace, "DEGRADATION") == []
    statuses = {
        line["payload_ref"]: line["payload"]["status"] for line in read_family(workspace, "CONTEXT")
    }
    assert statuses["run:p.good"] == statuses["sample:p.good.s.c"] == "completed"


def test_a_fifo_is_refused_as_an_artifact_without_blocking_on_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with (
        Contexta(workspace=tmp_path / "ws", config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
        pytest.raises(ValidationError, match="regular file") as caught,
    ):
        run.register_artifact("model", fifo)  # opening a FIFO to hash it would block forever
    assert caught.value.field == "path"


def test_values_at_the_documented_limits_are_accepted(tmp_path: Path) -> None:
    with (
        Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx,
        ctx.run("r" * 63) as run,
    ):
        run.metric(
            "k" * 255, 2**63 - 1, unit="u" * 255, tags={f"{i}": "v" * 1024 for i in range(64)}
        )
        run.event("e", message="m" * 65_536, attributes={"long": "x" * 65_536})
        run.event("e", message="m", attributes=_deep(16))
        # 10,000 values in all, counting every mapping and list: the root, the list, 9,998.
        run.event("e", message="m", attributes={"a": list(range(9_998))})
    lines = read_family(tmp_path, "RECORD")
    assert len(lines) == 4
    assert lines[0]["payload"]["payload"]["value"] == 2**63 - 1
    assert len(lines[1]["payload"]["payload"]["message"]) == 65_536


@pytest.mark.parametrize("timeout", ["soon", -1, float("nan"), True])
def test_an_invalid_flush_timeout_is_a_validation_error_not_a_type_error(
    tmp_path: Path, timeout: Any
) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx, ctx.run("r") as run:
        run.metric("m", 1)
        with pytest.raises(ValidationError) as caught:
            ctx.flush(timeout=timeout)
        assert caught.value.field == "timeout"
        ctx.flush(timeout=30)
    assert len(read_family(tmp_path, "RECORD")) == 1


# ---- the writer: a line that cannot be encoded costs only itself ---------------------------


class _GatedSink(LocalJsonlSink):
    """Holds its first write until released: everything queued meanwhile forms one batch."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(workspace / "cache" / "capture", name="local-jsonl")
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, chunk: Chunk) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        super().write(chunk)


def _batch_with_one_unencodable_line(workspace: Path) -> tuple[DeliveryError, int]:
    """2,000 good metrics of run ``other`` around one event of run ``bad`` whose message
    cannot be encoded (put past validation, as a bug or a custom path could), all in one
    batch. Returns the error flush() raised and the largest batch."""
    sink = _GatedSink(workspace)
    with (
        Contexta(workspace=workspace, sinks=[sink], config={"project_name": "p"}) as ctx,
        ctx.run("other") as other,
        ctx.run("bad") as bad,
    ):
        assert sink.entered.wait(30)  # the writer holds the opening lines; the rest queue up
        for i in range(1000):
            other.metric("m", i)
        item = bad._core.event_item("e", "ok", "info", None)
        item.payload.payload.message = _SURROGATE  # what validation now refuses at the call
        bad._core.pipeline.submit_blocking(item)
        for i in range(1000, 2000):
            other.metric("m", i)
        sink.release.set()
        with pytest.raises(DeliveryError) as caught:
            ctx.flush()
        largest = ctx.statistics().largest_batch
    return caught.value, largest


def test_a_line_that_cannot_be_encoded_is_lost_alone_and_the_rest_of_its_batch_is_written(
    tmp_path: Path,
) -> None:
    error, largest = _batch_with_one_unencodable_line(tmp_path)
    assert largest >= 2001  # the bad line shared its batch with the good ones
    assert (error.failed, error.runs) == (1, {"run:p.bad": 1})
    values = [
        line["payload"]["payload"]["value"]
        for line in read_family(tmp_path, "RECORD")
        if line["payload"]["envelope"]["run_ref"] == "run:p.other"
    ]
    assert values == list(range(2000))
    assert [
        line["payload"]["payload"]["event_key"]
        for line in read_family(tmp_path, "RECORD")
        if line["payload_type"] == "EventRecord"
    ] == []
    degradations = read_family(tmp_path, "DEGRADATION")
    assert [
        (d["payload"]["run_ref"], d["payload"]["count"], d["payload"]["degradation_kind"])
        for d in degradations
    ] == [("run:p.bad", 1, "delivery_failed")]
    assert "surrogates not allowed" in degradations[0]["payload"]["reason"]
    statuses = {
        line["payload_ref"]: line["payload"]["status"] for line in read_family(tmp_path, "CONTEXT")
    }
    assert statuses == {"run:p.other": "completed", "run:p.bad": "completed"}


def test_an_encoding_failure_names_the_sink_once(tmp_path: Path) -> None:
    error, _ = _batch_with_one_unencodable_line(tmp_path)
    assert len(error.errors) == 1
    message = error.errors[0]
    assert message.startswith("local-jsonl: encoding: 'utf-8' codec can't encode"), message
    assert message.count("local-jsonl") == 1
    assert str(error).count("local-jsonl") == 1


def test_a_scope_failed_by_an_exception_whose_message_cannot_be_encoded_is_still_closed(
    tmp_path: Path,
) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with pytest.raises(RuntimeError), ctx.run("r") as run:
            run.metric("m", 1)
            raise RuntimeError(f"bad {_SURROGATE}\x00")
    closing = read_family(tmp_path, "CONTEXT")[-1]["payload"]
    assert closing["status"] == "failed"
    assert closing["failure_reason"] == "RuntimeError: bad x \\ud800\\x00"  # escaped, not lost
    assert read_family(tmp_path, "DEGRADATION") == []


def test_a_line_at_every_limit_at_once_stays_under_the_documented_line_size(
    tmp_path: Path,
) -> None:
    from contexta_async._validation import MAX_LINE_BYTES

    # The largest line: an ARTIFACT line holds its attributes twice; every character of text is
    # a control character, which JSON writes as a 6-byte escape; the values left are long floats.
    text = ["\x01" * 65_536] * 7 + ["\x01" * 65_535]  # with the key "a": 524,288 characters
    floats = [-1.2345678901234567e-300] * (10_000 - 2 - len(text))  # the mapping and the list
    attributes = {"a": text + floats}
    artifact = tmp_path / ("d" * 200) / ("f" * 200)
    artifact.parent.mkdir()
    artifact.write_bytes(b"w")
    workspace = tmp_path / "ws"
    with (
        Contexta(workspace=workspace, config={"project_name": "p"}) as ctx,
        ctx.run(
            "r" * 60,
            metadata=attributes,
            tags={"\x01" * 253 + f"{i:02}": "\x01" * 1024 for i in range(64)},
        ) as run,
        run.stage("s" * 60) as stage,
        stage.batch("b" * 60) as batch,
        batch.sample("c" * 60) as sample,
    ):
        stage.register_artifact("k" * 63, artifact, attributes=attributes)
        sample.event("e" * 255, message="\x01" * 65_536, attributes=attributes)
    sizes = [
        len(line)
        for name in ("artifact", "record", "context")
        for line in (workspace / "cache" / "capture" / f"{name}.jsonl").read_bytes().splitlines()
    ]
    assert max(sizes) > 6 * 1024 * 1024  # the case is near the worst one
    assert max(sizes) < MAX_LINE_BYTES


# ---- found in review: arguments that got past the call ----------------------------------------


class _TwoFacedPath(os.PathLike[str]):
    """A path whose str() is not its fspath()."""

    def __init__(self, fspath: str, text: str) -> None:
        self._fspath = fspath
        self._text = text

    def __fspath__(self) -> str:
        return self._fspath

    def __str__(self) -> str:
        return self._text


def test_an_artifact_records_its_path_as_opened_and_refuses_overlong_paths(
    tmp_path: Path,
) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"x")
    with Contexta(workspace=tmp_path / "ws", config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run:
            with pytest.raises(ValidationError) as caught:
                run.register_artifact("model", "./" * 5_000 + str(target))
            assert caught.value.field == "path"
            run.register_artifact("model", _TwoFacedPath(str(target), "bad \ud800 \x00"))
        ctx.flush()
    (line,) = read_family(tmp_path / "ws", "ARTIFACT")
    assert line["payload"]["request"]["source"] == str(target)


def test_closing_with_a_reason_that_is_not_text_is_refused_and_the_scope_still_closes(
    tmp_path: Path,
) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run:
            with pytest.raises(ValidationError) as caught:
                run.close("failed", reason=12345)  # type: ignore[arg-type]
            assert caught.value.field == "reason"
            assert run.status == "open"
    statuses = [line["payload"]["status"] for line in read_family(tmp_path, "CONTEXT")]
    assert statuses == ["open", "completed"]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


def test_a_scope_left_by_an_exception_whose_str_fails_closes_as_failed(tmp_path: Path) -> None:
    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with pytest.raises(_Unprintable), ctx.run("r"):
            raise _Unprintable
    closing = read_family(tmp_path, "CONTEXT")[-1]["payload"]
    assert (closing["status"], closing["failure_reason"]) == ("failed", "_Unprintable")


def test_timeouts_beyond_what_the_platform_can_wait_mean_no_limit(tmp_path: Path) -> None:
    ctx = Contexta(workspace=tmp_path, config={"project_name": "p"}, shutdown_timeout=float("inf"))
    with ctx.run("r") as run:
        run.metric("m", 1)
    ctx.flush(timeout=float("inf"))
    ctx.flush(timeout=1e12)
    ctx.close()
    assert ctx.closed and ctx.statistics().written == 3


def test_a_custom_sink_with_an_unwritable_name_is_refused_at_construction(tmp_path: Path) -> None:
    class Named(MemorySink):
        pass

    sink = Named()
    sink.name = "bad \x00 name"
    with pytest.raises(ConfigurationError) as caught:
        Contexta(workspace=tmp_path, sinks=[sink])
    assert caught.value.field == "sinks"


def test_an_aggregation_scope_that_only_compares_equal_to_step_is_refused(
    tmp_path: Path,
) -> None:
    class EqualsAnything:
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = object.__hash__

    with Contexta(workspace=tmp_path, config={"project_name": "p"}) as ctx:
        with ctx.run("r") as run:
            with pytest.raises(ValidationError):
                run.metric("m", 1.0, aggregation_scope=EqualsAnything())  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                run.metric("m", 1.0, summary_basis=EqualsAnything())  # type: ignore[arg-type]
        ctx.flush()
