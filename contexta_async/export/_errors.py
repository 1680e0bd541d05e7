"""The error raised when an optional dependency of the export is not installed."""

from __future__ import annotations

from .._errors import ContextaError

__all__ = ["ExtraNotInstalledError"]


class ExtraNotInstalledError(ContextaError, ImportError):
    """A feature needs a package the core install leaves out (``module`` names it).

    The core keeps its small dependency set: Parquet and Arrow need pyarrow, which the
    ``analysis`` extra brings (``pip install 'contexta-async[analysis]'``); ``to_pandas()`` and
    ``to_polars()`` also need pandas or polars, which the user installs.
    """

    code = "extra_not_installed"

    def __init__(self, feature: str, module: str, install: str) -> None:
        super().__init__(
            f"{feature} needs {module}, which is not installed: {install}",
            details={"feature": feature, "module": module, "install": install},
        )
        self.feature = feature
        """What needed the module, e.g. ``"to_arrow()"`` or ``"--format parquet"``."""
        self.module = module
        """The missing module, e.g. ``"pyarrow"``."""
        self.install = install
        """The command that installs it."""
