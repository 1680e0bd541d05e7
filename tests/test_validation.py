"""Every validation rule raises a typed ValidationError naming the field, before anything is
queued, and leaves the records around it intact."""

from __future__ import annotations

import decimal
import fractions
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contexta_async import ConfigurationError, Contexta, ValidationError
from contexta_async._format.refs import normalize_name

from .capture_files import metrics


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Train Run #1", "train-run-1"),
        ("  linear-svm ", "linear-svm"),
        ("rbf_svm", "rbf-svm"),
        ("A..B", "a-b"),
    ],
)
def test_ascii_names_normalise_as_in_contexta(name: str, expected: str) -> None:
    assert normalize_name(name, field="run name") == expected


def test_non_ascii_names_stay_distinguishable() -> None:
    a = normalize_name("Ünïcode", field="run name")
    b = normalize_name("Unicode", field="run name")
    c = normalize_name("Ůnįcode", field="run name")
    d = normalize_name("日本語", field="run name")
    e = normalize_name("中文", field="run name")
    assert b == "unicode"
    assert a.startswith("unicode-x") and len(a) == len("unicode-x") + 8
    assert len({a, b, c}) == 3
    assert d != e and d.startswith("x")
    # stable: the same name always gives the same component
    assert normalize_name("Ünïcode", field="run name") == a


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "blank"),
        ("   ", "blank"),
        ("---", "letter or digit"),
        (None, "string"),
        (42, "string"),
        ("a" * 64, "63"),
        ("a\x00b", "NUL"),
    ],
)
def test_bad_run_names_are_rejected_naming_the_field(workspace: Path, name: Any, rule: str) -> None:
    ctx = Contexta(workspace=workspace)
    with pytest.raises(ValidationError, match=rule) as info:
        ctx.run(name)
    assert info.value.field == "run name"
    ctx.close()


@pytest.mark.parametrize(
    "key",
    ["Loss", "train_loss", "val/loss", "", " ", "1abc", "a..b", ".a", "a.", "a.1b", 5, None],
)
def test_bad_metric_keys_are_rejected(workspace: Path, key: Any) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError) as info:
            run.metric(key, 1.0)
        assert info.value.field == "key"
        run.metric("ok", 1.0)
    assert [m["payload"]["payload"]["metric_key"] for m in metrics(workspace)] == ["ok"]


@pytest.mark.parametrize("key", ["macro.f1", "latency.ms", "a", "pass.rate", " loss "])
def test_good_metric_keys_are_accepted(workspace: Path, key: str) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.metric(key, 1.0)
    assert metrics(workspace)[0]["payload"]["payload"]["metric_key"] == key.strip()


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (True, "bool"),
        (np.bool_(True), "bool"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (np.float32("nan"), "finite"),
        ("1.0", "real number"),
        (None, "real number"),
        (1 + 2j, "real number"),
        (decimal.Decimal("0.1"), "exactly"),
        (fractions.Fraction(1, 3), "exactly"),
        (2**70, "64 bits"),
        ([1.0], "real number"),
    ],
)
def test_bad_metric_values_are_rejected(workspace: Path, value: Any, rule: str) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError, match=rule) as info:
            run.metric("x", value)
        assert info.value.field == "value"
    assert metrics(workspace) == []


@pytest.mark.parametrize(
    ("value", "expected", "value_type"),
    [
        (np.float32(0.5), 0.5, "float"),
        (np.float64(0.25), 0.25, "float"),
        (np.int64(7), 7, "int"),
        (np.uint8(3), 3, "int"),
        (decimal.Decimal("0.5"), 0.5, "float"),
        (fractions.Fraction(1, 4), 0.25, "float"),
        (-3, -3, "int"),
        (1e300, 1e300, "float"),
    ],
)
def test_real_number_scalars_that_convert_exactly_are_accepted(
    workspace: Path, value: Any, expected: float, value_type: str
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.metric("x", value)
    payload = metrics(workspace)[0]["payload"]["payload"]
    assert payload["value"] == expected
    assert payload["value_type"] == value_type


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"unit": ""}, "unit"),
        ({"unit": 3}, "unit"),
        ({"tags": {"a": ""}}, "tags['a']"),
        ({"tags": {"": "x"}}, "tags key"),
        ({"tags": {"a": 1}}, "tags['a']"),
        ({"tags": ["a"]}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(65)}}, "tags"),
        ({"aggregation_scope": "epoch"}, "aggregation_scope"),
        ({"summary_basis": " "}, "summary_basis"),
    ],
)
def test_bad_metric_options_are_rejected(
    workspace: Path, kwargs: dict[str, Any], field: str
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError) as info:
            run.metric("x", 1.0, **kwargs)
        assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "m" * 65_537}, "message"),
        ({"message": "ok", "level": "fatal"}, "level"),
        ({"message": "ok", "attributes": {"x": float("nan")}}, "attributes['x']"),
        ({"message": "ok", "attributes": {1: "x"}}, "attributes"),
        ({"message": "ok", "attributes": {"x": object()}}, "attributes['x']"),
        ({"message": "ok", "attributes": [1]}, "attributes"),
    ],
)
def test_bad_events_are_rejected(workspace: Path, kwargs: dict[str, Any], field: str) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError) as info:
            run.event("note", **kwargs)
        assert info.value.field == field


def test_deeply_nested_attributes_have_a_documented_limit(workspace: Path) -> None:
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(20):
        node["child"] = {}
        node = node["child"]
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError, match="deeper than 16"):
            run.event("deep", message="m", attributes=nested)


def test_attributes_are_copied_at_the_call(workspace: Path) -> None:
    attributes: dict[str, Any] = {"items": [1, 2]}
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.event("note", message="m", attributes=attributes)
        attributes["items"].append(3)
    from .capture_files import read_lines

    [line] = read_lines(workspace, "RECORD")
    assert line["payload"]["payload"]["attributes"] == {"items": [1, 2]}


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        ("Model", "x", "kind"),
        ("model-card", "x", "kind"),
        ("model", "", "path"),
        ("model", "a\x00b", "path"),
        ("model", 5, "path"),
        ("model", "/definitely/missing/file", "path"),
    ],
)
def test_bad_artifacts_are_rejected(workspace: Path, kind: str, path: Any, field: str) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError) as info:
            run.register_artifact(kind, path)
        assert info.value.field == field


def test_a_directory_is_not_an_artifact(workspace: Path, tmp_path: Path) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError, match="regular file"):
            run.register_artifact("model", tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dataset_ref": "iris"}, "dataset_ref"),
        ({"dataset_ref": "dataset:Iris"}, "dataset_ref"),
        ({"tags": {"a": ""}}, "tags['a']"),
        ({"metadata": {"x": float("inf")}}, "metadata['x']"),
        ({"code_revision": ""}, "code_revision"),
    ],
)
def test_bad_run_options_are_rejected(workspace: Path, kwargs: dict[str, Any], field: str) -> None:
    ctx = Contexta(workspace=workspace)
    with pytest.raises(ValidationError) as info:
        ctx.run("r", **kwargs)
    assert info.value.field == field
    ctx.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue_size": 0}, "queue_size"),
        ({"queue_size": 1.5}, "queue_size"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"overflow": "block"}, "overflow"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"fsync": "yes"}, "fsync"),
        ({"config": ["project_name"]}, "config"),
        ({"config": {"project_name": ""}}, "config.project_name"),
        ({"sinks": []}, "sinks"),
        ({"sinks": [object()]}, "sinks"),
        ({"workspace": ""}, "workspace"),
    ],
)
def test_bad_options_raise_configuration_errors(
    workspace: Path, kwargs: dict[str, Any], field: str
) -> None:
    kwargs.setdefault("workspace", workspace)
    with pytest.raises(ValidationError) as info:
        Contexta(**kwargs)
    assert info.value.field == field
    if field != "config.project_name":
        assert isinstance(info.value, ConfigurationError)


def test_validation_errors_are_value_errors_with_code_and_details() -> None:
    with pytest.raises(ValueError) as info:
        normalize_name("", field="stage name")
    error = info.value
    assert isinstance(error, ValidationError)
    assert error.code == "validation_error"
    assert error.details == {"field": "stage name", "rule": "must not be blank"}
    assert str(error).startswith("stage name: must not be blank")


# ---- strings UTF-8 cannot encode, NUL, sizes ------------------------------------------------

_SURROGATE = "x \ud800"  # a lone surrogate: Python holds it, UTF-8 cannot encode it


async def test_the_async_face_refuses_unencodable_strings_at_the_call(workspace: Path) -> None:
    async with (
        Contexta(workspace=workspace, config={"project_name": "p"}) as ctx,
        ctx.run("r") as run,
        run.stage("s") as stage,
    ):
        calls: list[tuple[Any, str]] = [
            (lambda: ctx.run(_SURROGATE), "run name"),
            (lambda: run.stage(_SURROGATE), "stage name"),
            (lambda: stage.batch(_SURROGATE), "batch name"),
            (lambda: stage.sample(_SURROGATE), "sample name"),
            (lambda: ctx.run("x", code_revision=_SURROGATE), "code_revision"),
            (lambda: ctx.run("x", metadata={"m": [_SURROGATE]}), "metadata['m'][0]"),
            (lambda: stage.metric("m", 1, unit=_SURROGATE), "unit"),
            (lambda: stage.metric("m", 1, tags={"t": _SURROGATE}), "tags['t']"),
            (lambda: stage.event("e", message=_SURROGATE), "message"),
            (lambda: stage.event("e", message="m", attributes={_SURROGATE: 1}), "attributes"),
            (lambda: stage.metric_nowait("m", 1, unit=_SURROGATE), "unit"),
            (lambda: stage.event_nowait("e", message="m\x00"), "message"),
        ]
        for call, field in calls:
            with pytest.raises(ValidationError) as info:
                result = call()
                if hasattr(result, "__await__"):
                    await result
            assert info.value.field == field, str(info.value)
        await stage.metric("after", 1)
    assert [line["payload"]["payload"]["metric_key"] for line in metrics(workspace)] == ["after"]
    assert not (workspace / "cache" / "capture" / "degradation.jsonl").exists()


@pytest.mark.parametrize("project_name", [_SURROGATE, "p\x00"])
def test_a_project_name_utf8_cannot_encode_is_refused(workspace: Path, project_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Contexta(workspace=workspace, config={"project_name": project_name})
    assert info.value.field == "config.project_name"


@pytest.mark.parametrize("name", [_SURROGATE, "a\x00", "n" * 256])
def test_a_sink_name_that_cannot_be_written_is_refused(tmp_path: Path, name: str) -> None:
    from contexta_async import LocalJsonlSink, MemorySink

    for make in (lambda: LocalJsonlSink(tmp_path, name=name), lambda: MemorySink(name=name)):
        with pytest.raises(ConfigurationError) as info:
            make()
        assert info.value.field == "name"


def test_an_error_about_a_value_under_long_keys_stays_short(workspace: Path) -> None:
    # 16 levels of 1,024-character keys: the path to the value is 16 KB long.
    attributes: dict[str, Any] = {}
    node = attributes
    for level in range(15):
        node[f"{level:x}" * 1024] = {}
        node = node[f"{level:x}" * 1024]
    node["bad"] = "x" * 10_000 + "\x00"
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError) as info:
            run.event("e", message="m", attributes=attributes)
    error = info.value
    assert error.rule == "must not contain NUL bytes"
    assert len(error.field) <= 160 and len(str(error)) < 400
    assert error.field.startswith("attributes['0000") and error.field.endswith("['bad']")
    assert error.details["field"] == error.field


def test_keys_and_text_at_the_documented_limits_are_accepted(workspace: Path) -> None:
    from contexta_async._validation import MAX_ATTRIBUTE_KEY_LENGTH, MAX_ATTRIBUTE_TEXT

    assert (MAX_ATTRIBUTE_KEY_LENGTH, MAX_ATTRIBUTE_TEXT) == (1024, 524_288)
    # seven strings of 65,536 characters, one of 65,535, and the key "a": 524,288 in all
    text = ["x" * 65_536] * 7 + ["x" * 65_535]
    with Contexta(workspace=workspace) as ctx, ctx.run("r", metadata={"k" * 1024: 1}) as run:
        run.event("e", message="m", attributes={"a": text})
        run.event("e", message="m", attributes={"é" * 1024: "ü\U0001f600"})
        with pytest.raises(ValidationError, match="524288 characters"):
            run.event("e", message="m", attributes={"a": text, "b": ""})  # the key "b"
