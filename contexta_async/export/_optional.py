"""Imports of the optional modules, each failing with the command that installs it."""

from __future__ import annotations

from typing import Any, Final, Literal

from ._errors import ExtraNotInstalledError

__all__ = ["ANALYSIS_INSTALL", "import_optional"]

ANALYSIS_INSTALL: Final = "pip install 'contexta-async[analysis]'"

# pandas and polars are not in the extra (the user picks the DataFrame library); pyarrow is.
_INSTALL: Final = {
    "pyarrow": ANALYSIS_INSTALL,
    "pandas": "pip install pandas 'contexta-async[analysis]'",
    "polars": "pip install polars 'contexta-async[analysis]'",
}

Optional = Literal["pyarrow", "pyarrow.parquet", "pandas", "polars"]


def _load(module: Optional) -> Any:
    # Static imports, one per module: the package never imports a name it computed.
    if module == "pyarrow":
        import pyarrow

        return pyarrow
    if module == "pyarrow.parquet":
        import pyarrow.parquet

        return pyarrow.parquet
    if module == "pandas":
        import pandas

        return pandas
    import polars

    return polars


def import_optional(module: Optional, feature: str) -> Any:
    """The module ``module``, or ExtraNotInstalledError naming ``feature`` and the install."""
    try:
        return _load(module)
    except ImportError as exc:
        top = module.partition(".")[0]  # pyarrow.parquet is installed with pyarrow
        raise ExtraNotInstalledError(feature, top, _INSTALL[top]) from exc
