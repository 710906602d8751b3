"""The cache directory, file locks and atomic installs into it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

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
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename.

    On failure the temp dir is removed, so `final` is either absent or complete.
    Callers hold `locked(final)` around this.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_chunks(
    path: Path, chunks: Iterable[bytes | bytearray | memoryview], mode: int | None = None
) -> None:
    """Write `chunks` via a temp file in the same directory and rename it over `path`,
    so `path` is never partial; `mode` (else mkstemp's 0600) is set before the rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    atomic_write_chunks(path, [data], mode)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
