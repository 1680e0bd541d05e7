"""The errors of the export: an optional dependency not installed, an output not writable."""

from __future__ import annotations

from .._errors import ContextaError

__all__ = ["ExtraNotInstalledError", "UnwritableOutputError"]


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


class UnwritableOutputError(ContextaError, OSError):
    """The output file could not be written: its directory refuses it, the disk is full, the
    file too large, the name too long... (``path`` names the output, ``reason`` says why).

    It is an ``OSError`` (``errno`` is the system's error number), raised from the one the
    system gave (its ``__cause__``); nothing is left behind: the temporary file is removed.
    """

    code = "unwritable_output"

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        super().__init__(f"cannot write {path}: {reason}", details={"path": path, "reason": reason})
        self.errno = errno
        self.path = path
        """The output, as an absolute path."""
        self.reason = reason
        """Why it could not be written, e.g. ``"No space left on device"``."""

    def __str__(self) -> str:
        # OSError's own text would be "[Errno N] ..." whenever errno is set
        return str(self.args[0])
