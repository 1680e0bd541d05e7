"""Imports of the optional modules, each failing with the command that installs it."""

from __future__ import annotations

import importlib
from typing import Any, Final

from ._errors import ExtraNotInstalledError

__all__ = ["ANALYSIS_INSTALL", "import_optional"]

ANALYSIS_INSTALL: Final = "pip install 'contexta-async[analysis]'"

# pandas and polars are not in the extra (the user picks the DataFrame library); pyarrow is.
_INSTALL: Final = {
    "pyarrow": ANALYSIS_INSTALL,
    "pandas": "pip install pandas 'contexta-async[analysis]'",
    "polars": "pip install polars 'contexta-async[analysis]'",
}


def import_optional(module: str, feature: str) -> Any:
    """The module ``module``, or ExtraNotInstalledError naming ``feature`` and the install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]  # pyarrow.parquet is installed with pyarrow
        raise ExtraNotInstalledError(feature, top, _INSTALL[top]) from exc
