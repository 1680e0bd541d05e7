"""Every validation rule raises a typed ValidationError naming the field, before anything is
queued, and leaves the records around it intact."""

from __future__ import annotations

import decimal
import fractions
import re
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest

from contexta_async import ConfigurationError, Contexta, ValidationError
from contexta_async._format.refs import normalize_name

from .capture_files import metrics, read_lines


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
        ({"config": {"project_name": 5}}, "config.project_name"),
        ({"config": {"project_name": "p\x00"}}, "config.project_name"),
        ({"config": {"project_name": "..."}}, "config.project_name"),
        ({"ship_to": 5}, "ship_to"),
        ({"ship_to": "ftp://user:pa55-secret@h/x"}, "ship_to"),
        ({"ship_to": "user:pa55-secret@h/db"}, "ship_to"),
        ({"sinks": []}, "sinks"),
        ({"sinks": [object()]}, "sinks"),
        ({"workspace": ""}, "workspace"),
    ],
)
def test_bad_options_raise_configuration_errors(
    workspace: Path, kwargs: dict[str, Any], field: str
) -> None:
    kwargs.setdefault("workspace", workspace)
    with pytest.raises(ConfigurationError) as info:
        Contexta(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValidationError)  # ConfigurationError is one
    assert "pa55-secret" not in str(info.value)
    assert not workspace.exists()  # options are checked before anything is created


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
    with pytest.raises(ConfigurationError) as info:
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


# ---- arrays: a 0-d one is one value, any other is refused ------------------------------------


class _TorchSize(tuple[int, ...]):
    """torch.Size is a tuple subclass."""


class _ScalarTensor:
    """How a torch or JAX tensor of shape () looks to the validation (torch is not installed
    here): a shape of (), ``item()``, and an ``__index__`` that refuses a float element."""

    shape = _TorchSize()

    def __init__(self, element: Any) -> None:
        self._element = element

    def item(self) -> Any:
        return self._element

    def __float__(self) -> float:
        return float(self._element)

    def __index__(self) -> int:
        raise TypeError("only integer tensors of a single element can be converted to an index")


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        (np.array([0.5]), "(1,)"),
        (np.array([0.5, 1.0]), "(2,)"),
        (np.array([7]), "(1,)"),
        (np.zeros((1, 1)), "(1, 1)"),
        (np.array([], dtype=np.float64), "(0,)"),
    ],
)
def test_an_array_of_one_dimension_or_more_is_not_a_metric_value(
    workspace: Path, value: Any, shape: str
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        for call in (run.metric, run.metric_nowait):
            with pytest.raises(ValidationError) as info:
                call("x", value)
            assert info.value.field == "value"
            assert info.value.rule.startswith(f"must be one number, not an array of shape {shape}")
            assert ".item()" in info.value.rule
        run.metric("after", 1.0)
    assert [line["payload"]["payload"]["metric_key"] for line in metrics(workspace)] == ["after"]


@pytest.mark.parametrize(
    ("value", "expected", "value_type"),
    [
        (np.array(0.5), 0.5, "float"),
        (np.array(3), 3, "int"),
        (np.array(np.float32(0.25)), 0.25, "float"),
        (np.array(2**63 - 1, dtype=np.uint64), 2**63 - 1, "int"),
        (_ScalarTensor(0.75), 0.75, "float"),
        (_ScalarTensor(5), 5, "int"),
    ],
)
def test_a_0d_array_or_tensor_is_the_number_it_holds(
    workspace: Path, value: Any, expected: float, value_type: str
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.metric("x", value)
    payload = metrics(workspace)[0]["payload"]["payload"]
    assert payload["value"] == expected and type(payload["value"]) is type(expected)
    assert payload["value_type"] == value_type


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (np.array(True), "not a bool"),
        (_ScalarTensor(True), "not a bool"),
        (np.array(np.nan), "finite"),
        (_ScalarTensor(float("inf")), "finite"),
        (np.array(2**64 - 1, dtype=np.uint64), "64 bits"),
        (np.array("0.5"), "real number"),
        (np.array(1 + 2j), "real number"),
        (np.complex64(1), "real number"),  # it used to be taken as 1.0
        (np.datetime64("2026-01-01T00:00:00.000000000"), "real number"),
        (np.array(np.timedelta64(5, "ns")), "not a value of dtype timedelta64"),  # item(): 5
        (np.array(0.5, dtype=object), "not a value of dtype object"),
        (np.ma.masked, "masked"),  # a missing value, whose float() is 0.0
    ],
)
def test_a_0d_array_or_numpy_value_is_refused_for_what_its_element_breaks(
    workspace: Path, value: Any, rule: str
) -> None:
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError, match=rule) as info:
            run.metric("x", value)
        assert info.value.field == "value"


def test_torch_tensors_follow_the_array_rule(workspace: Path) -> None:
    torch = pytest.importorskip("torch")  # CI installs it (.ci/run); _ScalarTensor otherwise
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.metric("loss", torch.tensor(0.5, requires_grad=True) * 2)
        run.metric("count", torch.tensor(3))
        run.event("e", message="m", attributes={"flag": torch.tensor(True)})
        for bad, rule in [
            (torch.tensor([0.5]), "not an array of shape (1,)"),
            (torch.tensor(True), "not a bool"),
            (torch.tensor(float("nan")), "finite"),
        ]:
            with pytest.raises(ValidationError, match=re.escape(rule)) as info:
                run.metric("x", bad)
            assert info.value.field == "value"
        with pytest.raises(ValidationError, match=re.escape("array of shape (2,)")) as info:
            run.event("e", message="m", attributes={"w": torch.zeros(2)})
        assert info.value.field == "attributes['w']"
    assert [(m["payload"]["payload"]["value"]) for m in metrics(workspace)] == [1.0, 3]
    [line] = read_lines(workspace, "RECORD")[-1:]
    assert line["payload"]["payload"]["attributes"] == {"flag": True}


def test_a_tensor_whose_item_fails_is_a_validation_error(workspace: Path) -> None:
    class OnADevice(_ScalarTensor):
        def item(self) -> Any:
            raise RuntimeError("cannot be read on this device")

    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        with pytest.raises(ValidationError, match="item\\(\\), which raised RuntimeError") as info:
            run.event("e", message="m", attributes={"t": OnADevice(1.0)})
        assert info.value.field == "attributes['t']"


async def test_arrays_in_attributes_are_refused_naming_their_path(workspace: Path) -> None:
    async with Contexta(workspace=workspace) as ctx, ctx.run("r", metadata={"m": 1}) as run:
        cases: list[tuple[Any, str]] = [
            (
                lambda: run.event("e", message="m", attributes={"w": np.array([1.0, 2.0])}),
                "attributes['w']",
            ),
            (
                lambda: run.event("e", message="m", attributes={"w": [np.array([1])]}),
                "attributes['w'][0]",
            ),
            (
                lambda: ctx.run("x", metadata={"w": {"v": np.zeros((2, 2))}}),
                "metadata['w']['v']",
            ),
        ]
        for call, field in cases:
            with pytest.raises(ValidationError) as info:
                result = call()
                if hasattr(result, "__await__"):
                    await result
            assert info.value.field == field
            assert info.value.rule.startswith("must be JSON-safe, not an array of shape")
            assert ".tolist()" in info.value.rule
        # a datetime's item() can be an int: not taken for one
        when = np.datetime64("2026-01-01T00:00:00.000000000")
        with pytest.raises(ValidationError, match="not a value of dtype datetime64") as info:
            await run.event("e", message="m", attributes={"at": when})
        assert info.value.field == "attributes['at']"
        await run.event("after", message="m")
    from .capture_files import read_lines

    [line] = read_lines(workspace, "RECORD")
    assert line["payload"]["payload"]["event_key"] == "after"


def test_numpy_scalars_and_0d_arrays_in_attributes_are_written_as_their_element(
    workspace: Path,
) -> None:
    attributes = {
        "flag": np.bool_(True),
        "flag0d": np.array(False),
        "f32": np.float32(0.5),
        "i64": np.int64(3),
        "zero_d": np.array(0.25),
        "text0d": np.array("label"),
        "tensor": _ScalarTensor(2),
        "nested": [np.float64(1.5), {"n": np.array(4)}],
    }
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        run.event("e", message="m", attributes=attributes)
    from .capture_files import read_lines

    [line] = read_lines(workspace, "RECORD")
    written = line["payload"]["payload"]["attributes"]
    assert written == {
        "f32": 0.5,
        "flag": True,
        "flag0d": False,
        "i64": 3,
        "nested": [1.5, {"n": 4}],
        "tensor": 2,
        "text0d": "label",
        "zero_d": 0.25,
    }
    assert type(written["flag"]) is bool and type(written["i64"]) is int


# ---- register_artifact's flags ---------------------------------------------------------------

_NOT_BOOLS: Final = ["no", "False", 0, 1, None, np.bool_(True)]


@pytest.mark.parametrize("flag", ["compute_hash", "allow_missing"])
@pytest.mark.parametrize("value", _NOT_BOOLS)
def test_register_artifact_flags_must_be_bools(
    workspace: Path, tmp_path: Path, flag: str, value: Any
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    with Contexta(workspace=workspace) as ctx, ctx.run("r") as run:
        for path in (model, tmp_path / "missing.bin"):
            with pytest.raises(ValidationError, match="must be a bool") as info:
                run.register_artifact("model", path, **{flag: value})
            assert info.value.field == flag
        run.register_artifact("model", model, compute_hash=False)
    [line] = read_lines(workspace, "ARTIFACT")
    policy = line["payload"]["request"]["verification_policy"]
    assert policy == {"compute_hash": False, "require_existing_source": True}


@pytest.mark.parametrize("flag", ["compute_hash", "allow_missing"])
async def test_register_artifact_flags_must_be_bools_on_the_async_face(
    workspace: Path, tmp_path: Path, flag: str
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    async with Contexta(workspace=workspace) as ctx, ctx.run("r") as run, run.stage("s") as st:
        for value in _NOT_BOOLS:
            with pytest.raises(ValidationError, match="must be a bool") as info:
                run.register_artifact("model", model, **{flag: value})  # raises at the call
            assert info.value.field == flag
            with pytest.raises(ValidationError, match="must be a bool"):
                st.register_artifact("model", model, **{flag: value})
        await run.register_artifact("model", tmp_path / "missing.bin", allow_missing=True)
    [line] = read_lines(workspace, "ARTIFACT")
    policy = line["payload"]["request"]["verification_policy"]
    assert policy == {"compute_hash": True, "require_existing_source": False}
