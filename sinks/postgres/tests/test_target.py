"""The store URL: what is shown of it never holds the password, however it is written."""

from __future__ import annotations

import io

import pytest
from contexta_async_postgres._target import parse_target

from contexta_async import ValidationError
from contexta_async.stores import ShipRequest


@pytest.mark.parametrize(
    "url", ["postgresql://u:pa/ss@h/db", "postgresql://u:p@ss@h/db", "postgres://u:a@b@c@h:5/db"]
)
def test_a_password_with_unencoded_at_or_slash_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_target(url)
    assert caught.value.field == "to"
    assert "pa/ss" not in str(caught.value) and "ss@" not in str(caught.value)
    assert "percent-encode" in caught.value.rule


def test_a_percent_encoded_password_is_redacted_in_every_spelling() -> None:
    target = parse_target("postgresql://u:pa%2Fss%40w@db.example:6543/store")
    assert target.display == "db.example:6543/store"
    for spelling in ("pa/ss@w", "pa%2Fss%40w"):
        assert "pa" not in target.redact(f"failed: {spelling}").replace("failed", "")
    assert "pa" not in repr(target) and "pa" not in target.redacted_url


def test_a_ship_request_never_shows_its_url() -> None:
    request = ShipRequest(
        workspace="ws",
        url="postgresql://u:S3CRET@h/db",
        follow=False,
        batch_lines=10,
        retries=0,
        poll_interval=1.0,
        json=False,
        out=io.StringIO(),
        err=io.StringIO(),
    )
    assert "S3CRET" not in repr(request)
