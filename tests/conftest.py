from __future__ import annotations

from pathlib import Path

import pytest

# Every `async def` test runs once per anyio backend (anyio's pytest plugin, `anyio_mode =
# "auto"` in pyproject.toml): the library promises the same behaviour on asyncio and trio.
# A module that holds only to asyncio overrides this fixture and says why.
BACKENDS = ("asyncio", "trio")


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"
