"""Name normalisation and the ref grammar (``kind:component.component...``): the one parser.

Capture builds refs with ``join_ref`` and ``components``; the readers take them apart with
``parse_scope`` (what a scope ref says: its kind, run, stage, batch and name),
``first_component`` (a scope's project), ``last_component``, ``run_matches`` and
``SPLIT_LAST``. Nothing else slices refs.

Contexta 1.0.0 lowercases a name and turns every run of characters outside ``[a-z0-9]`` into
``-``, so non-ASCII letters vanish and ``"Ünïcode"`` and ``"Ünicode"`` both become ``n-code``.
Here non-ASCII names are first folded to ASCII (NFKD, combining marks dropped) and then get a
suffix ``-x`` + 8 hex digits of the SHA-256 of the stripped, NFC-normalised name, so that two
different names never share a ref while ASCII names normalise exactly as in Contexta.

A name holding NUL or a lone surrogate (which UTF-8 cannot encode) is refused.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from operator import methodcaller
from typing import Final, NamedTuple

from .._errors import ValidationError
from .._validation import check_string

__all__ = [
    "MAX_COMPONENT_LENGTH",
    "MAX_REF_LENGTH",
    "SCOPE_KINDS",
    "SPLIT_LAST",
    "ScopeRef",
    "components",
    "first_component",
    "is_valid_ref",
    "join_ref",
    "last_component",
    "normalize_name",
    "parse_sample_head",
    "parse_scope",
    "run_matches",
]

MAX_COMPONENT_LENGTH = 63
MAX_REF_LENGTH = 255

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_REF = re.compile(r"([a-z][a-z0-9_-]*):([a-z0-9]+(?:-[a-z0-9]+)*(?:\.[a-z0-9]+(?:-[a-z0-9]+)*)*)")
_MAX_NAME_LENGTH = 1024


def normalize_name(name: object, *, field: str) -> str:
    """Return the ref component for a user-supplied name, or raise ValidationError."""
    if not isinstance(name, str):
        raise ValidationError(field, "must be a string", name)
    stripped = name.strip()
    if not stripped:
        raise ValidationError(field, "must not be blank", name)
    if len(stripped) > _MAX_NAME_LENGTH:
        raise ValidationError(field, f"must be at most {_MAX_NAME_LENGTH} characters", name)
    check_string(name, field)  # no NUL, nothing UTF-8 cannot encode (the name is written too)
    if stripped.isascii():
        component = _NOT_ALNUM.sub("-", stripped.lower()).strip("-")
    else:
        nfc = unicodedata.normalize("NFC", stripped)
        folded = "".join(
            ch for ch in unicodedata.normalize("NFKD", nfc) if not unicodedata.combining(ch)
        )
        base = _NOT_ALNUM.sub("-", folded.lower()).strip("-")
        digest = hashlib.sha256(nfc.encode("utf-8")).hexdigest()[:8]
        component = f"{base}-x{digest}" if base else f"x{digest}"
    if not component:
        raise ValidationError(field, "must contain at least one letter or digit", name)
    if len(component) > MAX_COMPONENT_LENGTH:
        raise ValidationError(
            field, f"normalises to more than {MAX_COMPONENT_LENGTH} characters", name
        )
    return component


def join_ref(kind: str, *components: str, field: str = "name") -> str:
    """Build ``kind:c1.c2...`` from already-normalised components; enforce the length limit."""
    ref = f"{kind}:{'.'.join(components)}"
    if len(ref) > MAX_REF_LENGTH:
        raise ValidationError(field, f"the resulting ref is longer than {MAX_REF_LENGTH}", ref)
    return ref


def is_valid_ref(ref: object) -> bool:
    """True when ``ref`` matches the grammar ``kind:component(.component)*``."""
    return (
        isinstance(ref, str)
        and len(ref) <= MAX_REF_LENGTH
        and _REF.fullmatch(ref) is not None
        and all(len(c) <= MAX_COMPONENT_LENGTH for c in ref.split(":", 1)[1].split("."))
    )


def components(ref: str) -> str:
    """``"run:p.r"`` -> ``"p.r"``: the components of a ref, without its kind."""
    return ref.split(":", 1)[-1]


def first_component(ref: str) -> str:
    """``"run:p.r"`` -> ``"p"`` (the project of a scope ref; ``"project:p"`` -> ``"p"``)."""
    return components(ref).partition(".")[0]


def last_component(ref: str | None) -> str | None:
    """``"sample:p.r.s.case-1"`` -> ``"case-1"`` (the name of the scope); None for None."""
    return None if ref is None else ref.rpartition(".")[2]


# ref -> (everything before the last component, ".", the last component): mapped over a list
# of refs at C speed by the readers' scan (a sample ref's head names its stage or batch).
SPLIT_LAST: Final = methodcaller("rpartition", ".")

# The number of components of each scope ref (a sample also has a 4-component form, directly
# under its stage: ``sample:project.run.stage.name``).
SCOPE_KINDS: Final = {"run": 2, "stage": 3, "batch": 4, "sample": 5}


class ScopeRef(NamedTuple):
    """What a scope ref says. Names are ref components; refs are interned (few distinct)."""

    kind: str  # "run", "stage", "batch" or "sample"
    run_ref: str
    stage_ref: str | None
    parent_ref: str | None  # a sample's stage or batch ref; None for the other kinds
    stage: str | None
    batch: str | None
    name: str | None  # a sample's name; None for the other kinds


def parse_scope(ref: str) -> ScopeRef | None:
    """``run:p.r``, ``stage:p.r.s``, ``batch:p.r.s.b``, ``sample:p.r.s.n`` or
    ``sample:p.r.s.b.n`` -> its ScopeRef; None for anything else (another kind, a wrong
    number of components, an empty component)."""
    kind, _, value = ref.partition(":")
    return _scope(kind, value.split("."))


def parse_sample_head(head: str) -> ScopeRef | None:
    """``sample:p.r.s`` or ``sample:p.r.s.b`` (a sample ref without its name, as
    ``SPLIT_LAST`` leaves it) -> the ScopeRef of any sample under it, with ``name`` None."""
    kind, _, value = head.partition(":")
    if kind != "sample":
        return None
    return _scope(kind, [*value.split("."), ""], named=False)


def _scope(kind: str, parts: list[str], *, named: bool = True) -> ScopeRef | None:
    n = len(parts)
    expected = SCOPE_KINDS.get(kind)
    if expected is None or not (n == expected or (kind == "sample" and n == 4)):
        return None
    if not all(parts[:-1]) or (named and not parts[-1]):
        return None
    run = sys.intern(f"run:{parts[0]}.{parts[1]}")
    if kind == "run":
        return ScopeRef(kind, run, None, None, None, None, None)
    stage = sys.intern(f"stage:{parts[0]}.{parts[1]}.{parts[2]}")
    # A batch ref ends with the batch's name; a 5-component sample ref names it before its own.
    batch_name = parts[3] if kind == "batch" or n == 5 else None
    if kind == "stage":
        return ScopeRef(kind, run, stage, None, parts[2], None, None)
    if kind == "batch":
        return ScopeRef(kind, run, stage, None, parts[2], batch_name, None)
    parent = stage if n == 4 else sys.intern(f"batch:{'.'.join(parts[:4])}")
    return ScopeRef(kind, run, stage, parent, parts[2], batch_name, parts[-1] or None)


def run_matches(ref: str, name: str) -> bool:
    """``name`` names the run ``ref``: the full ref, or a suffix of whole components
    (``grounded`` and ``mock-openai-compare.grounded`` both name
    ``run:mock-openai-compare.grounded``)."""
    name = name.strip()
    if ref == name:
        return True
    if name.startswith("run:"):
        return False
    value = components(ref)
    return value == name or value.endswith("." + name)
