"""File I/O that cannot be turned against the host: bounded reads of regular files only,
exclusive creation, and atomic replacement that never lands on a device node or FIFO.

Used for user inputs and outputs (`convert -o`, `report -o`, MODULE, --system-map) and for
files in a directory a guest can write (every name there may be a symlink, a FIFO, a device
node or a huge file planted by code under test). `printable` makes text taken from such files
safe to print on a terminal. The primitives the converter needs live in harness/klp/files.py
(the converter imports nothing outside harness/klp but errors) and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from harness.errors import FileReadError, HarnessError
from harness.klp.files import (
    READ_STEP,
    MissingFileError,
    StrPath,
    UnsafeFileError,
    atomic_write_chunks,
    printable,
    printable_lines,
    read_regular,
)

__all__ = [
    "READ_STEP",
    "MissingFileError",
    "StrPath",
    "UnsafeFileError",
    "atomic_write_bytes",
    "atomic_write_chunks",
    "atomic_write_text",
    "exclusive_dir",
    "exclusive_file",
    "open_dir",
    "printable",
    "printable_lines",
    "read_regular",
    "sweep_special_files",
    "write_new",
]


def write_new(name: str, data: bytes, *, dir_fd: int, mode: int = 0o644) -> None:
    """Create `name` in the directory `dir_fd` and write `data`; never follows or reuses
    an existing name (O_CREAT | O_EXCL fails on any existing entry, a symlink included)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as err:
        raise UnsafeFileError(f"{name}: cannot create: {err.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def open_dir(path: StrPath) -> int:
    """A directory fd for `path` (no symlink at the last component), for *at() calls."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise FileReadError(f"{os.fspath(path)}: {err.strerror}") from None


def atomic_write_bytes(path: StrPath, data: bytes, mode: int | None = None) -> None:
    atomic_write_chunks(path, [data], mode)


def atomic_write_text(path: StrPath, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def exclusive_dir(parent: Path, stem: str) -> Path:
    """A new directory `parent/stem`, or `stem-2`, `stem-3`, ... : never one that exists,
    even when several processes ask for the same stem at once (mkdir is atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise HarnessError(f"{parent}: no free name for {stem}")


def exclusive_file(path: Path) -> tuple[Path, BinaryIO]:
    """Create `path` for writing, or `<stem>-2<suffix>`, `-3`, ... : never an existing name
    (O_EXCL, so two processes asking at once get two files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            continue
    raise HarnessError(f"{path}: no free name")


def sweep_special_files(top: Path) -> list[tuple[Path, str]]:
    """Remove every entry under `top` that is neither a regular file nor a directory
    (symlinks, FIFOs, device nodes, sockets), without following links; return what went.

    Run after the guest is gone, so that no later reader of the results (a report, an
    artifact upload that follows links) can be led out of them.
    """
    removed: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                continue
            kind = "symlink" if stat.S_ISLNK(mode) else "special file"
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append((path, kind))
    return removed
