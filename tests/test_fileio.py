"""harness.fileio: terminal-safe text, bounded reads (procfs included), writes through links."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.fileio import UnsafeFileError, atomic_write_bytes, printable, read_regular


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("kernel_clone", "kernel_clone"),
        ("\x1b[2K\rklp-harness: all good\n", r"\x1b[2K\rklp-harness: all good\n"),
        ("tab\there", r"tab\there"),
        ("del\x7f csi\x9b nel\x85", r"del\x7f csi\x9b nel\x85"),
        ("bidi\u202egnp.exe", r"bidi\u202egnp.exe"),
        ("é ü ß", "é ü ß"),  # printable latin-1 (how ELF names are decoded) stays
        ("back\\slash", "back\\slash"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(printable(text)) == shown  # escaping twice changes nothing
    assert printable(Path(text)) == shown


def test_procfs_is_read_to_its_end() -> None:
    """procfs files are regular with st_size 0: read up to the limit, not to st_size."""
    assert os.stat("/proc/self/status").st_size == 0
    data = read_regular("/proc/self/status", 1 << 20)
    assert b"\nPid:" in data and data.endswith(b"\n")
    with pytest.raises(UnsafeFileError, match="more than the 100 bytes"):
        read_regular("/proc/self/status", 100)


def test_large_limit_allocates_nothing_large(tmp_path: Path) -> None:
    """A 1 GiB limit must not mean a 1 GiB buffer: under a 512 MiB address-space limit a
    small file still reads."""
    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    code = (
        "import resource, sys; from harness.fileio import read_regular; "
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20)); "
        "print(len(read_regular(sys.argv[1], 1 << 30)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "1000", proc.stderr


def test_sizes_past_the_first_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 9000)
    assert read_regular(path, 256 * 9000) == path.read_bytes()
    with pytest.raises(UnsafeFileError, match="more than"):
        read_regular(path, 256 * 9000 - 1)


@pytest.mark.parametrize("kind", ["fifo", "dir", "dev"])
def test_non_regular_is_refused_without_opening(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block: read_regular never does
    elif kind == "dir":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        read_regular(path, 1 << 20)


def test_write_through_a_proc_magic_link(tmp_path: Path) -> None:
    """Like /dev/stdout -> /proc/self/fd/1 when fd 1 is a pipe: realpath cannot name it."""
    read_end, write_end = os.pipe()
    link = tmp_path / "out"
    link.symlink_to(f"/proc/self/fd/{write_end}")
    try:
        atomic_write_bytes(link, b"through the pipe")
        os.close(write_end)
        assert os.read(read_end, 100) == b"through the pipe"
    finally:
        os.close(read_end)
    assert link.is_symlink() and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_regular_file_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to("real")
    atomic_write_bytes(tmp_path / "link", b"new", mode=0o640)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_bytes() == b"new"
    assert (tmp_path / "real").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_whole_file_is_the_first_read(tmp_path: Path) -> None:
    """A file read in one go is returned as read, not joined with the empty read that found
    its end (that copy cost more than the conversion of a 20 MB module); empty is empty."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    assert read_regular(path, 10) == b""
    reads: list[bytes] = []

    class Handle(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            reads.append(super().read(size))
            return reads[-1]

    from harness.klp.files import _read_upto  # the read loop itself, on a counted handle

    data = _read_upto(Handle(b"x" * 100), 1000, 100)
    assert [len(r) for r in reads] == [100, 0] and data is reads[0]
