"""The file primitives the converter needs, safe against hostile inputs: terminal-safe text
(`printable`), bounded reads of regular files only (`read_regular`) and atomic writes that never
land on a directory, block device or socket (`atomic_write_chunks`).

Part of harness/klp so the converter imports nothing outside itself but errors; harness/fileio.py
re-exports these names for the rest of harness.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from typing import BinaryIO

from harness.errors import FileReadError, HarnessError

StrPath = str | os.PathLike[str]

READ_STEP = 1 << 20  # past the size fstat reported (procfs says 0): read this much at a time
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UnsafeFileError(FileReadError):
    """A name that is not a plain regular file where one is required, or is too large."""


class MissingFileError(FileReadError):
    """No entry of that name."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def printable(text: object) -> str:
    """`text` safe to print on a terminal: every control or other non-printable character
    (ESC, CR, LF, DEL, C1 controls, bidi overrides) written as \\n, \\xNN or \\uNNNN, the
    way readelf shows odd symbol names. A backslash stays as it is, so escaping twice
    changes nothing."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def printable_lines(text: object) -> str:
    """`printable` for each line of a multi-line message, keeping its line breaks."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def read_regular(
    path: StrPath,
    limit: int,
    *,
    follow: bool = True,
    dir_fd: int | None = None,
    what: str = "",
) -> bytes:
    """The whole content of regular file `path`, at most `limit` bytes.

    The name is opened with O_PATH first and checked with fstat, so a FIFO or device node
    is never opened for reading (no hang, no side effect); the file is then read through
    that same inode. `follow=False` refuses a symlink at the last component (O_NOFOLLOW).
    Raises UnsafeFileError (non-regular, too large) or FileReadError (missing, unreadable).
    """
    label = printable(what or os.fspath(path))
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        pfd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError as err:
        raise MissingFileError(f"{label}: {err.strerror}") from None
    except OSError as err:
        raise FileReadError(f"{label}: {err.strerror}") from None
    try:
        info = os.fstat(pfd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{label}: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise UnsafeFileError(f"{label}: {info.st_size} bytes, more than the {limit} allowed")
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise FileReadError(f"{label}: {err.strerror}") from None
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as handle:
        data = _read_upto(handle, limit + 1, info.st_size)
    if len(data) > limit:
        raise UnsafeFileError(f"{label}: more than the {limit} bytes allowed")
    return data


def _read_upto(handle: BinaryIO, cap: int, size: int) -> bytes:
    """At most `cap` bytes: the `size` fstat saw in one read, then (a file that grew, or a
    procfs file whose size reads as 0) steps of READ_STEP; never a `cap`-sized buffer, which
    a 1 GiB limit would make a MemoryError under a memory rlimit."""
    parts = [handle.read(min(size + 1, cap))]
    total = len(parts[0])
    while total < cap and parts[-1]:
        parts.append(handle.read(min(READ_STEP, cap - total)))
        total += len(parts[-1])
    if len(parts) > 1 and not parts[-1]:
        parts.pop()  # the read that found the end: joining it would copy the whole file
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_through(path: str, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
    """A FIFO or character device (/dev/null, /dev/stdout, a pipe): write into it, never
    replace it. Opened without O_CREAT or O_TRUNC: nothing else is touched; if the name
    was swapped for another kind of file since it was checked, nothing is written."""
    with open(os.open(path, os.O_WRONLY | os.O_CLOEXEC), "wb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise UnsafeFileError(f"{printable(path)}: changed while being written; not written")
        for chunk in chunks:
            handle.write(chunk)


def atomic_write_chunks(
    path: StrPath, chunks: Iterable[bytes | bytearray | memoryview], mode: int | None = None
) -> None:
    """Write `chunks` to `path` so that it is never partial.

    A new path or a regular file (through any symlinks, which are kept) gets a temp file
    in the same directory renamed over it; `mode` (else mkstemp's 0600) is set before the
    rename. A FIFO or character device is written through, never replaced. Anything else
    (a directory, a block device, a socket) is refused with one line.
    """
    try:
        # stat(path), not stat(realpath): /dev/stdout is a /proc magic link whose target
        # (pipe:[1234]) has no name realpath could give, yet stat follows it to the pipe
        info: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise HarnessError(f"{printable(os.fspath(path))}: {err.strerror}") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            _write_through(os.fspath(path), chunks)
            return
        raise UnsafeFileError(
            f"{printable(os.fspath(path))}: {_kind(info.st_mode)}; refusing to write over it"
        )
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
