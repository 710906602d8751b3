"""The cache directory, file locks and atomic installs into it.

A staging dir (`.<name>.XXXXXXXX` beside its final name) is flocked by the process that made
it for as long as it lives; one whose lock is free was left by a process that is gone (a lock
dies with its process, whatever pid comes next) and is swept by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.fileio import atomic_write_bytes, atomic_write_chunks, atomic_write_text

__all__ = [
    "atomic_write_bytes",
    "atomic_write_chunks",
    "atomic_write_text",
    "cache_dir",
    "cache_key",
    "cache_root",
    "hold_dir",
    "locked",
    "remove_tree",
    "set_cache_root",
    "staged_dir",
    "sweep_all",
    "sweep_owned",
    "sweep_staging",
    "tree_size",
    "try_locked",
]

ENV_VAR = "KLP_HARNESS_CACHE"


def cache_root() -> Path:
    """`$KLP_HARNESS_CACHE`, else `$XDG_CACHE_HOME/klp-harness`, else `~/.cache/klp-harness`."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "klp-harness").absolute()


def set_cache_root(path: Path) -> None:
    """Used by `--cache-dir`: the environment carries it to every stage and subprocess."""
    os.environ[ENV_VAR] = str(path.expanduser().absolute())


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


_UNSAFE = re.compile(r"[^A-Za-z0-9.+~_-]")


def cache_key(text: str) -> str:
    """`text` (a spec, a package version, a path) as one cache file or directory name: every
    character but letters, digits and `.+~_-` becomes `_`, and so does a leading dot (never
    `.`, `..` or a hidden name, which staging dirs use)."""
    key = _UNSAFE.sub("_", text)
    return "_" + key[1:] if key.startswith(".") else key or "_"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `<path>.lock`, so concurrent runs serialise on one entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_locked(path: Path) -> Iterator[bool]:
    """Like `locked`, without waiting: yields False when another holder has it (this process
    included, through another open of the lock file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_dir(path: Path) -> int:
    """An fd of directory `path` with an exclusive flock on it: the mark of a live owner.
    The fd is close-on-exec, so only this process holds it; close it to let go."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _owner_gone(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock


def _mounts_under(path: Path) -> bool:
    """Something is mounted at or below `path` (never walk into a mount to delete it)."""
    prefix = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                return True
    return False


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (what vanishes meanwhile counts 0)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def sweep_owned(parent: Path, pattern: str) -> list[tuple[Path, int]]:
    """Remove the dirs of `parent` whose names fully match the regex `pattern` and whose owner
    is gone (no flock on them); (path, bytes) of each one removed. The caller holds the lock
    that serialises the creators of such dirs, so none is between mkdtemp and its flock."""
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    for name in names:
        path = parent / name
        if not re.fullmatch(pattern, name) or path.is_symlink() or not path.is_dir():
            continue
        if _owner_gone(path) and not _mounts_under(path):
            size = tree_size(path)
            shutil.rmtree(path, ignore_errors=True)
            # an orphaned child of the dead owner (tar under dpkg-deb) may still be writing
            # there for a few seconds: what it leaves is taken by the next sweep
            if not path.exists():
                removed.append((path, size))
    return removed


def _staging_pattern(final: Path) -> str:
    return re.escape(f".{final.name}.") + "[a-z0-9_]{8}"  # what mkdtemp adds


def sweep_staging(final: Path) -> list[tuple[Path, int]]:
    """Staging dirs of `final` left by killed runs; the caller holds `locked(final)`."""
    return sweep_owned(final.parent, _staging_pattern(final))


def sweep_all(parent: Path) -> list[tuple[Path, int]]:
    """The staging dirs in `parent` left by killed runs, for every entry not being made now
    (its lock is free)."""
    removed = []
    finals = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if m := re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}", name):
                finals.add(m.group(1))
    for name in sorted(finals):
        with try_locked(parent / name) as mine:
            if mine:
                removed += sweep_staging(parent / name)
    return removed


def remove_tree(final: Path) -> None:
    """Remove `final` without ever leaving it half there: it is first renamed to a staging
    name (a kill before the rmtree finishes leaves a dir the next sweep removes)."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        final.unlink()
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.rename(final, trash)  # a directory may replace an empty one
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename.

    On failure the temp dir is removed, so `final` is either absent or complete.
    Callers hold `locked(final)` around this; staging dirs of killed runs are swept first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    fd = hold_dir(tmp)
    try:
        yield tmp
        remove_tree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)
