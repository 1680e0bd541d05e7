"""Validation of captured values. Every function raises ValidationError naming the field.

Limits (documented in docs/reliability.md): a key at most 255 characters; a unit, tag key or
summary basis at most 255; a tag value at most 1,024; at most 64 tags; a message at most 65,536
characters; attributes and metadata at most 16 levels deep, 10,000 values in all, keys at most
1,024 characters, 65,536 characters per string and 524,288 characters of keys and strings in
all. No string anywhere may hold NUL or a lone surrogate (which UTF-8 cannot encode): such a
string would make its line unwritable. Together these bound one encoded line: see
``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import math
import operator
import re
import threading
from collections.abc import Mapping
from typing import Any, Final

from ._errors import ValidationError

__all__ = [
    "AGGREGATION_SCOPES",
    "EVENT_LEVELS",
    "MAX_ATTRIBUTE_DEPTH",
    "MAX_ATTRIBUTE_KEY_LENGTH",
    "MAX_ATTRIBUTE_TEXT",
    "MAX_ATTRIBUTE_VALUES",
    "MAX_LINE_BYTES",
    "MAX_MESSAGE_LENGTH",
    "MAX_STRING_LENGTH",
    "MAX_TAGS",
    "check_aggregation_scope",
    "check_artifact_kind",
    "check_attributes",
    "check_cluster",
    "check_epoch",
    "check_flag",
    "check_key",
    "check_level",
    "check_message",
    "check_metric_value",
    "check_optional_text",
    "check_string",
    "check_tags",
    "check_timeout",
    "check_unit",
    "timeout_seconds",
    "writable_text",
]

AGGREGATION_SCOPES: Final = frozenset({"run", "stage", "operation", "step", "slice"})
EVENT_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
MAX_KEY_LENGTH: Final = 255
MAX_SHORT_TEXT: Final = 255
MAX_TAG_VALUE_LENGTH: Final = 1024
MAX_TAGS: Final = 64
MAX_MESSAGE_LENGTH: Final = 65_536
MAX_STRING_LENGTH: Final = 65_536
MAX_ATTRIBUTE_DEPTH: Final = 16
MAX_ATTRIBUTE_VALUES: Final = 10_000
MAX_ATTRIBUTE_KEY_LENGTH: Final = 1024
MAX_ATTRIBUTE_TEXT: Final = 524_288  # characters of keys and strings in one mapping, in all
# What the limits above guarantee for one encoded line (the worst case is an ARTIFACT line,
# which holds its attributes twice, every character a 6-byte JSON escape such as \u0001):
# 2 x 6 x 524,288 bytes of text, plus structure, paths and refs, stays under 8 MiB. The bound
# is checked at the call, where counting characters is cheap, not by encoding there.
MAX_LINE_BYTES: Final = 8 * 1024 * 1024
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_KEY = re.compile(r"[a-z][a-z0-9-]*(?:\.[a-z][a-z0-9-]*)*")
_ARTIFACT_KIND = re.compile(r"[a-z][a-z0-9_]*")
_EMPTY_TAGS: Final[dict[str, str]] = {}

# Cache of keys already checked: keys repeat on the hot path, and the set stays small in
# practice; it is bounded so that a program generating keys cannot grow it without limit.
_known_keys: set[str] = set()
_KNOWN_KEYS_MAX: Final = 4096


def check_key(key: object, field: str = "key") -> str:
    """Metric/event key: ``^[a-z][a-z0-9-]*(\\.[a-z][a-z0-9-]*)*$`` after strip."""
    if type(key) is str and key in _known_keys:
        return key
    if not isinstance(key, str):
        raise ValidationError(field, "must be a string", key)
    stripped = key.strip()
    if not stripped:
        raise ValidationError(field, "must not be blank", key)
    if len(stripped) > MAX_KEY_LENGTH:
        raise ValidationError(field, f"must be at most {MAX_KEY_LENGTH} characters", key)
    if _KEY.fullmatch(stripped) is None:
        raise ValidationError(
            field,
            "must be lowercase dot-separated words of [a-z0-9-], each starting with a letter "
            "(e.g. 'latency.ms')",
            key,
        )
    if stripped == key and len(_known_keys) < _KNOWN_KEYS_MAX:
        _known_keys.add(key)
    return stripped


def check_metric_value(value: object, field: str = "value") -> tuple[int | float, str]:
    """Return ``(value, value_type)``; accept real numbers that convert exactly, not bools.

    A NumPy scalar or a 0-d array or tensor counts as its ``.item()``; an array of one
    dimension or more is refused, even with one element (see ``_one_element``)."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return value, "float"  # type: ignore[return-value]
        raise ValidationError(field, "must be finite (not NaN or infinity)", value)
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            return value, "int"  # type: ignore[return-value]
        raise ValidationError(field, "integer must fit in 64 bits", value)
    return _convert_number(value, field)


def _convert_number(value: object, field: str) -> tuple[int | float, str]:
    kind = _kinds.get(type(value)) or _learn_kind(value)
    if kind == _NUMPY_FLOAT:
        converted = float(value)  # type: ignore[arg-type]
        if math.isfinite(converted):
            return converted, "float"
        raise ValidationError(field, "must be finite (not NaN or infinity)", value)
    if kind == _NUMPY_INT:
        number = operator.index(value)  # type: ignore[arg-type]
        if _INT64_MIN <= number <= _INT64_MAX:
            return number, "int"
        raise ValidationError(field, "integer must fit in 64 bits", value)
    if kind == _NUMPY_NOT_REAL:  # complex, datetime64, timedelta64, bytes_, void...
        raise ValidationError(field, "must be a real number", value)
    if kind == _OTHER:
        shape = getattr(value, "shape", None)
        if shape is not None:  # an array or a tensor (NumPy, torch, JAX...)
            value = _one_element(value, shape, field, _NOT_ONE_NUMBER, "biuf")
            if type(value) is float or type(value) is int:
                return check_metric_value(value, field)
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy bools too
        raise ValidationError(field, "must be a number, not a bool", value)
    if isinstance(value, (str, bytes)) or value is None:
        raise ValidationError(field, "must be a real number", value)
    if hasattr(value, "__index__"):  # int subclasses
        try:
            number = operator.index(value)
        except TypeError as exc:  # an __index__ that refuses (e.g. a float tensor's)
            raise ValidationError(field, "must be a real number (int or float)", value) from exc
        if _INT64_MIN <= number <= _INT64_MAX:
            return number, "int"
        raise ValidationError(field, "integer must fit in 64 bits", value)
    if hasattr(value, "__float__") and not isinstance(value, complex):
        try:
            converted = float(value)
            exact = bool(converted == value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(field, "must be a real number", value) from exc
        if not math.isfinite(converted):
            raise ValidationError(field, "must be finite (not NaN or infinity)", value)
        if not exact:
            raise ValidationError(
                field, "must convert exactly to a 64-bit float (e.g. not a Decimal)", value
            )
        return converted, "float"
    raise ValidationError(field, "must be a real number (int or float)", value)


# What a type's values are, learnt on first sight of the type (the types seen are few; the
# table is bounded like the key cache). NumPy's float scalars of at most 64 bits convert
# exactly with float(), its integer scalars with operator.index(); its bool_ and longer
# floats take the general path, which refuses a bool and an inexact float; its complex,
# datetime64, timedelta64, bytes_ and void scalars are not real numbers. Every other type
# takes the general path, an array or tensor through ``_one_element`` first.
_NUMPY_FLOAT: Final = 1
_NUMPY_INT: Final = 2
_NUMPY_OTHER: Final = 3
_NUMPY_NOT_REAL: Final = 4
_OTHER: Final = 5
_kinds: dict[type, int] = {}


def _learn_kind(value: object) -> int:
    kind = _OTHER
    if any(c.__name__ == "generic" and c.__module__ == "numpy" for c in type(value).__mro__):
        dtype = getattr(value, "dtype", None)
        code, size = getattr(dtype, "kind", ""), getattr(dtype, "itemsize", 0)
        if code == "f" and size <= 8:
            kind = _NUMPY_FLOAT
        elif code in ("i", "u"):
            kind = _NUMPY_INT
        elif code in ("b", "f", "U"):  # refused or checked by the general path
            kind = _NUMPY_OTHER
        else:
            kind = _NUMPY_NOT_REAL
    if len(_kinds) < _KNOWN_KEYS_MAX:
        _kinds[type(value)] = kind
    return kind


_NOT_ONE_NUMBER: Final = (
    "must be one number, not an array of shape {shape} (a 0-d array or a NumPy scalar is "
    "accepted; pass .item() of a one-element array)"
)
_NOT_JSON_ARRAY: Final = (
    "must be JSON-safe, not an array of shape {shape} (a 0-d array or a NumPy scalar is "
    "accepted; pass .tolist() for a list)"
)


def _one_element(value: object, shape: object, field: str, rule: str, dtypes: str) -> object:
    """What a 0-d array-like stands for: a NumPy scalar, or a NumPy array, torch or JAX tensor
    of shape ``()``, gives its element as ``value.item()`` does (a Python float, int or
    bool). An array of one dimension or more is refused (``rule``, formatted with its shape),
    even with one element: only a 0-d one is unambiguously one value. So is a NumPy dtype
    whose kind is not in ``dtypes`` (e.g. datetime64, whose item() may be an int), and a
    masked (missing) element."""
    try:
        dimensions = len(shape)  # type: ignore[arg-type]
    except TypeError:
        return value  # a ``shape`` that is not an array's: the caller's rules decide
    if dimensions:
        try:
            shown = str(tuple(shape))  # type: ignore[arg-type]
        except TypeError:
            shown = repr(shape)
        raise ValidationError(field, rule.format(shape=shown), value)
    dtype = getattr(value, "dtype", None)
    code = getattr(dtype, "kind", None)  # NumPy's and JAX's dtypes have one, torch's not
    if isinstance(code, str) and code not in dtypes:
        what = "a real number" if dtypes == "biuf" else "JSON-safe"
        raise ValidationError(field, f"must be {what}, not a value of dtype {dtype}", value)
    if getattr(value, "mask", False) is not False and _masked(value):
        raise ValidationError(field, "must not be masked (a missing value)", value)
    item = getattr(value, "item", None)
    if not callable(item):
        return value
    try:
        return item()
    except Exception as exc:  # e.g. a tensor on a device it cannot be read from
        failed = f"must give its element through .item(), which raised {type(exc).__name__}"
        raise ValidationError(field, failed, value) from exc


def _masked(value: object) -> bool:
    try:
        return bool(value.mask)  # type: ignore[attr-defined]
    except Exception:  # a ``mask`` that is not NumPy's: not ours to judge
        return False


def check_optional_text(
    value: object, field: str, *, max_length: int = MAX_SHORT_TEXT
) -> str | None:
    if value is None:
        return None
    return _check_text(value, field, max_length)


def check_string(value: str, field: str, subject: str = "") -> None:
    """Refuse NUL, and what UTF-8 cannot encode (lone surrogates, e.g. from
    ``os.fsdecode``): either would make the line that holds the string unwritable or
    unreadable. ``subject`` starts the rule, e.g. ``"keys "``."""
    if "\x00" in value:
        raise ValidationError(field, f"{subject}must not contain NUL bytes", value)
    if not value.isascii():  # O(1) in CPython: the common case costs nothing more
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(
                field, f"{subject}must be encodable as UTF-8 (no lone surrogates)", value
            ) from None


def writable_text(text: str) -> str:
    """``text`` with NUL and what UTF-8 cannot encode written as backslash escapes: for text
    the library writes but does not take as an argument (an exception's message)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _check_text(value: object, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string", value)
    if not value.strip():
        raise ValidationError(field, "must not be blank", value)
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters", value)
    if "\x00" in value or not value.isascii():  # the common case without a call
        check_string(value, field)
    return value


def check_cluster(value: object, field: str = "cluster") -> str | None:
    """A sample's cluster: optional, non-blank, at most 255 characters, writable as UTF-8."""
    return None if value is None else _check_text(value, field, MAX_SHORT_TEXT)


def check_flag(value: object, field: str) -> bool:
    """A bool option (``True`` or ``False``): a truthy string such as ``"no"`` is refused, not
    taken for True."""
    if type(value) is not bool:
        raise ValidationError(field, "must be a bool (True or False)", value)
    return value


def timeout_seconds(seconds: float) -> float:
    """A timeout already checked to be a non-negative number, as a float: ``inf`` (no limit)
    from ``inf`` or anything past what the platform can wait (``threading.TIMEOUT_MAX``),
    such as ``10**400``, which no float holds (it would raise OverflowError when waited on)."""
    return math.inf if seconds >= threading.TIMEOUT_MAX else float(seconds)


def check_timeout(value: object, field: str = "timeout") -> float | None:
    """A ``timeout=`` argument: None (no limit) or a non-negative number of seconds (not a
    bool, not NaN), returned as :func:`timeout_seconds` gives it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValidationError(field, "must be None or a non-negative number of seconds", value)
    return timeout_seconds(value)


def check_epoch(value: object, field: str = "epoch") -> int | None:
    """A sample's attempt number: optional, an int >= 1 (a bool is refused)."""
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, int):
        raise ValidationError(field, "must be an int (not a bool)", value)
    if not 1 <= value <= _INT64_MAX:
        raise ValidationError(field, f"must be between 1 and {_INT64_MAX}", value)
    return int(value)


_known_units: set[str] = set()


def check_unit(unit: object, field: str = "unit") -> str | None:
    """Optional, non-blank, at most 255 characters. Units repeat: validated ones are cached."""
    if unit is None or (type(unit) is str and unit in _known_units):
        return unit
    checked = _check_text(unit, field, MAX_SHORT_TEXT)
    if len(_known_units) < _KNOWN_KEYS_MAX:
        _known_units.add(checked)
    return checked


def check_message(value: object, field: str = "message") -> str:
    return _check_text(value, field, MAX_MESSAGE_LENGTH)


def check_tags(tags: object, field: str = "tags") -> dict[str, str]:
    """A mapping of non-blank strings to non-blank strings; copied."""
    if tags is None:
        return _EMPTY_TAGS
    if not isinstance(tags, Mapping):
        raise ValidationError(field, "must be a mapping of str to str", tags)
    if len(tags) > MAX_TAGS:
        raise ValidationError(field, f"must have at most {MAX_TAGS} entries", len(tags))
    for key, value in tags.items():
        _check_text(key, f"{field} key", MAX_SHORT_TEXT)
        _check_text(value, f"{field}[{key!r}]", MAX_TAG_VALUE_LENGTH)
    # Sorted here so the encoder need not sort (lines have sorted keys at every level).
    return dict(sorted(tags.items()))


def check_level(level: object, field: str = "level") -> str:
    if not isinstance(level, str) or level not in EVENT_LEVELS:
        raise ValidationError(field, f"must be one of {sorted(EVENT_LEVELS)}", level)
    return level


def check_aggregation_scope(scope: object, field: str = "aggregation_scope") -> str:
    if not isinstance(scope, str) or scope not in AGGREGATION_SCOPES:
        raise ValidationError(field, f"must be one of {sorted(AGGREGATION_SCOPES)}", scope)
    return scope


def check_artifact_kind(kind: object, field: str = "kind") -> str:
    if not isinstance(kind, str) or _ARTIFACT_KIND.fullmatch(kind) is None:
        raise ValidationError(field, "must match ^[a-z][a-z0-9_]*$ (e.g. 'model')", kind)
    if len(kind) > 63:
        raise ValidationError(field, "must be at most 63 characters", kind)
    return kind


def check_attributes(value: object, field: str = "attributes") -> dict[str, Any]:
    """A JSON-safe mapping (str keys; None, bool, finite numbers, str, lists, mappings); copied.

    A NumPy scalar or 0-d array of a bool, integer, float or string dtype (or a 0-d tensor)
    counts as its ``.item()``; an array of one dimension or more is refused.

    At most 16 levels deep and 10,000 values in all; keys at most 1,024 characters, strings at
    most 65,536, and 524,288 characters of keys and strings in all; no NUL or lone surrogate in
    any key or string, at any depth.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be a mapping with string keys", value)
    budget = [MAX_ATTRIBUTE_VALUES, MAX_ATTRIBUTE_TEXT]  # values, characters left
    return _copy_json(value, field, 1, budget)  # type: ignore[no-any-return]


def _text_exceeded(path: str) -> ValidationError:
    return ValidationError(
        path, f"holds more than {MAX_ATTRIBUTE_TEXT} characters of keys and strings", None
    )


def _check_attribute_key(key: object, path: str) -> None:
    if not isinstance(key, str):
        raise ValidationError(path, "keys must be strings", key)
    if len(key) > MAX_ATTRIBUTE_KEY_LENGTH:
        raise ValidationError(
            path, f"keys must be at most {MAX_ATTRIBUTE_KEY_LENGTH} characters", key
        )
    check_string(key, path, "keys ")


def _copy_json(value: object, path: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValidationError(path, f"holds more than {MAX_ATTRIBUTE_VALUES} values", None)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise ValidationError(path, f"string longer than {MAX_STRING_LENGTH}", value)
        if "\x00" in value or not value.isascii():  # the common case without a call
            check_string(value, path)
        budget[1] -= len(value)
        if budget[1] < 0:
            raise _text_exceeded(path)
        return value
    if isinstance(value, (int, float)) or hasattr(value, "__float__"):
        plain = type(value) is int or type(value) is float
        if not plain and (_kinds.get(type(value)) or _learn_kind(value)) >= _NUMPY_OTHER:
            shape = getattr(value, "shape", None)
            if shape is not None:  # a NumPy scalar or 0-d array stands for its element
                value = _one_element(value, shape, path, _NOT_JSON_ARRAY, "biufU")
                if not hasattr(value, "shape"):  # a plain value now: checked as if given so
                    budget[0] += 1  # counted once
                    return _copy_json(value, path, depth, budget)
        return check_metric_value(value, path)[0]
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise ValidationError(path, f"nests deeper than {MAX_ATTRIBUTE_DEPTH} levels", None)
    if isinstance(value, Mapping):
        # The keys checked together, in C: one look at their concatenation finds the common
        # case good; only a doubtful mapping has its keys looked at one by one.
        try:
            keys = "".join(value)
        except TypeError:
            keys = None
        if (
            keys is None
            or "\x00" in keys
            or not keys.isascii()
            or (
                len(keys) > MAX_ATTRIBUTE_KEY_LENGTH
                and max(map(len, value)) > MAX_ATTRIBUTE_KEY_LENGTH
            )
        ):
            for key in value:
                _check_attribute_key(key, path)
            keys = "".join(value)
        budget[1] -= len(keys)
        if budget[1] < 0:
            raise _text_exceeded(path)
        return {
            key: _copy_json(value[key], f"{path}[{key!r}]", depth + 1, budget)
            for key in sorted(value)
        }
    if isinstance(value, (list, tuple)):
        return [_copy_json(item, f"{path}[{i}]", depth + 1, budget) for i, item in enumerate(value)]
    raise ValidationError(path, "must be JSON-safe (None, bool, number, str, list, mapping)", value)
