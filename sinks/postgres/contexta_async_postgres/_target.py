"""The store URL: what to show of it (never the password), and connecting with clear errors.

libpq reads what the URL leaves out from the ``PG*`` environment variables and the password
file (``PGPASSFILE``, default ``~/.pgpass``); psycopg hands the URL to libpq unchanged.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict

from contexta_async import ValidationError

from ._errors import StoreAuthenticationError, StoreConnectionError

__all__ = ["APPLICATION_NAME", "Target", "parse_target"]

APPLICATION_NAME = "contexta-async-ship"
"""How a shipper's sessions show in ``pg_stat_activity``."""

# SQLSTATEs that retrying cannot fix: bad credentials or authorisation, no such database.
_AUTH_STATES = {"28000", "28P01"}
_PERMANENT_STATES = {"3D000", "42501"}


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed store URL. ``str()`` and ``repr()`` never show the password."""

    url: str
    host: str
    port: str
    dbname: str
    user: str
    secrets: tuple[str, ...]

    def __repr__(self) -> str:
        return f"Target({self.display!r})"

    __str__ = __repr__

    @property
    def display(self) -> str:
        """``host:port/database``: what every message names."""
        return f"{self.host}:{self.port}/{self.dbname}"

    @property
    def redacted_url(self) -> str:
        """``postgresql://user@host:port/database``, with no password or other parameters."""
        user = f"{urllib.parse.quote(self.user)}@" if self.user else ""
        return f"postgresql://{user}{self.host}:{self.port}/{self.dbname}"

    def redact(self, text: str) -> str:
        """``text`` with every form of the password replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def connection_error(self, exc: BaseException, *, attempts: int = 1) -> StoreConnectionError:
        """The error to raise for ``exc`` (a libpq failure), with the password redacted."""
        reason = self.redact(_one_line(exc))
        state = getattr(exc, "sqlstate", None)
        if state in _AUTH_STATES or _looks_like_auth(reason):
            return StoreAuthenticationError(self.display, reason, attempts=attempts)
        return StoreConnectionError(self.display, reason, attempts=attempts)

    def is_permanent(self, exc: BaseException) -> bool:
        """Whether retrying the connection cannot help (credentials, missing database)."""
        state = getattr(exc, "sqlstate", None)
        if state in _AUTH_STATES or state in _PERMANENT_STATES:
            return True
        return _looks_like_auth(_one_line(exc)) or "does not exist" in str(exc)


def _raw_password(url: str, field: str) -> str:
    """The password as written in the URL's authority (empty if none); ValidationError when the
    authority is ambiguous: an unencoded ``@`` or ``/`` in a password makes libpq split the URL
    elsewhere, and parts of the password would then be shown as host or database."""
    rest = url.partition("://")[2]
    authority, _, after = rest.partition("/")
    if authority.count("@") > 1 or ("@" not in authority and "@" in after.partition("?")[0]):
        raise ValidationError(
            field, "must percent-encode '@' and '/' in the user name and password", "..."
        )
    userinfo = authority.rpartition("@")[0]
    return userinfo.partition(":")[2]


def parse_target(url: str, *, field: str = "to") -> Target:
    """Parse a ``postgresql://`` or ``postgres://`` URL (ValidationError naming ``field``:
    ``--to`` for the shipper, ``workspace`` for a reader)."""
    raw_password = _raw_password(url, field)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ValidationError(field, "must be a valid postgresql:// URL", "...") from None
    env = os.environ
    host = str(params.get("host") or env.get("PGHOST") or "localhost")
    port = str(params.get("port") or env.get("PGPORT") or "5432")
    user = str(params.get("user") or env.get("PGUSER") or "")
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user or "postgres")
    password = str(params.get("password") or "")
    found = [password, raw_password, urllib.parse.unquote(raw_password), env.get("PGPASSWORD", "")]
    # Every spelling of the password that may appear in a message: as given, URL-quoted.
    forms: set[str] = set()
    for secret in found:
        if secret:
            forms.update({secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)})
    ordered = tuple(sorted(forms, key=len, reverse=True))
    return Target(url=url, host=host, port=port, dbname=dbname, user=user, secrets=ordered)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # libpq: 'connection failed: connection to server at "h" (1.2.3.4), port 5432 failed: WHY\n
    # \tIs the server running...'. Keep WHY: the host is named by the caller.
    first = text.splitlines()[0] if text else type(exc).__name__
    marker = " failed: "
    if "connection to server" in first and marker in first:
        first = first.rsplit(marker, 1)[1]
    return first.removeprefix("FATAL:").strip() or type(exc).__name__


def _looks_like_auth(reason: str) -> bool:
    lowered = reason.lower()
    return (
        "password authentication failed" in lowered
        or "no password supplied" in lowered
        or "no pg_hba.conf entry" in lowered
        or ("role" in lowered and "does not exist" in lowered)
    )
