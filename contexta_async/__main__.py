"""``python -m contexta_async`` and the ``contexta-async`` console script."""

from __future__ import annotations

import sys

import structlog

from ._cli import run_cli

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 error, 2 usage).

    As the program (``argv`` None), structlog output goes to stderr: stdout carries only the
    tables or the JSON document. The library itself never configures logging.
    """
    if argv is None:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return run_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
