"""Writing an output file safely: the checks on its path, a temporary name beside it, and the
rename into place that replaces only what it may (``export`` and the CLI's ``report``)."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Final

from .._errors import ValidationError
from ._errors import UnwritableOutputError

__all__ = ["check_output", "create_partial", "move_into_place", "unwritable"]

_NAME_MAX: Final = 255  # when the file system does not say (Linux, macOS and Windows: 255)
_RENAME_NOREPLACE: Final = 1  # <linux/fs.h>
_AT_FDCWD: Final = -100
_KINDS: Final = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def unwritable(target: Path, exc: OSError) -> UnwritableOutputError:
    """``exc``, raised while writing ``target`` (or its temporary file), as the typed error
    naming ``target``."""
    # The system's words for the error number: pyarrow's strerror is longer ("Error writing
    # bytes to file. Detail: [errno 27] File too large").
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
    return UnwritableOutputError(str(target), reason, exc.errno)


def _refuse_special(target: Path, mode: int) -> None:
    """Only a regular file may be replaced: renaming over a FIFO, a device node or a symbolic
    link would put a regular file in its place (``-o /dev/stdout --force`` as root would
    replace the system's node)."""
    for test, kind in _KINDS:
        if test(mode):
            raise ValidationError(
                "output",
                f"is {kind}, not a regular file: only a regular file can be replaced",
                str(target),
            )


def check_output(output: str | os.PathLike[str], overwrite: bool, capture_dir: Path) -> Path:
    """``output`` made absolute, if it can be written: not inside ``capture_dir``, in a
    directory that exists, and either new or (with ``overwrite``) a regular file."""
    target = Path(os.path.abspath(output))
    real, capture = Path(os.path.realpath(target)), Path(os.path.realpath(capture_dir))
    if real == capture or capture in real.parents:
        # It would replace a capture file (record.jsonl, record.index...) or sit among them.
        raise ValidationError(
            "output", "must not be inside the workspace's capture folder", str(target)
        )
    try:
        if not target.parent.is_dir():
            raise ValidationError("output", "its directory does not exist", str(target))
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return target
    except OSError as exc:  # e.g. a name too long for the file system
        raise unwritable(target, exc) from exc
    if stat.S_ISDIR(mode):
        raise ValidationError("output", "is a directory, not a file", str(target))
    _refuse_special(target, mode)
    if not overwrite:
        raise ValidationError(
            "output", "already exists: pass overwrite=True (--force) to replace it", str(target)
        )
    return target


def _name_max(directory: Path) -> int:
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        return _NAME_MAX
    return limit if limit > 0 else _NAME_MAX  # -1: no limit


def create_partial(target: Path) -> Path:
    """A new empty file next to ``target``, hidden, named ``.NAME.XXXXXXXX.partial``, with
    the permissions the umask gives a new file (mkstemp's would be 0600).

    NAME is cut as much as needed for the whole name to fit the file system's limit: the
    name only has to be unique, and a legal output name must never fail for its temporary
    one being too long."""
    limit = _name_max(target.parent)
    while True:
        token = secrets.token_hex(4)
        name = target.name
        while len(os.fsencode(f".{name}.{token}.partial")) > limit and name:
            name = name[: -max(1, len(name) // 8)]
        partial = target.with_name(f".{name}.{token}.partial")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return partial


@cache
def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """Linux's renameat2(2), from the C library; None where there is none."""
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    function.restype = ctypes.c_int
    renameat2: Callable[[int, bytes, int, bytes, int], int] = function
    return renameat2


# The file system does not do this kind of rename (renameat2's flags, or hard links).
_UNSUPPORTED: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


def _rename_noreplace(partial: Path, target: Path) -> None:
    """Rename ``partial`` to ``target`` unless ``target`` exists (then FileExistsError), in
    one step: a check before ``os.replace`` would leave a moment in which a file created by
    someone else is silently replaced."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        src, dst = os.fsencode(partial), os.fsencode(target)
        if renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(target))  # EEXIST: FileExistsError
    try:
        os.link(partial, target)  # fails with FileExistsError if target exists
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED | {errno.EPERM}:
            raise
        # Neither renameat2 nor hard links here (a FAT or some network file systems): check,
        # then rename, the best this file system allows.
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.replace(partial, target)
        return
    os.unlink(partial)


def move_into_place(partial: Path, target: Path, overwrite: bool) -> None:
    """Rename the complete ``partial`` to ``target``. Without ``overwrite``, a file that
    appeared at ``target`` meanwhile is never replaced; with it, only a regular file is."""
    if not overwrite:
        try:
            _rename_noreplace(partial, target)
        except FileExistsError:
            raise ValidationError(
                "output",
                "was created while the file was written: pass overwrite=True (--force) "
                "to replace it",
                str(target),
            ) from None
        return
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        pass
    else:  # checked again: what is there may have changed since check_output
        if stat.S_ISDIR(mode):
            raise ValidationError("output", "is a directory, not a file", str(target))
        _refuse_special(target, mode)
    os.replace(partial, target)
