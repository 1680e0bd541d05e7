"""Name normalisation and the ref grammar (``kind:component.component...``).

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
import unicodedata

from ._errors import ValidationError
from ._validation import check_string

__all__ = [
    "MAX_COMPONENT_LENGTH",
    "MAX_REF_LENGTH",
    "is_valid_ref",
    "join_ref",
    "normalize_name",
    "split_ref",
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


def split_ref(ref: str) -> tuple[str, list[str]]:
    """``"stage:p.r.s"`` -> ``("stage", ["p", "r", "s"])``."""
    kind, _, value = ref.partition(":")
    return kind, value.split(".")
