"""Staging dirs (and apt-get download temp dirs) of processes that are gone are swept, those
of live ones kept: real processes holding the flock, real SIGKILLs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cache import locked, staged_dir, sweep_owned, sweep_staging
from harness.cli.main import main
from harness.kernels.apt import DOWNLOAD_DIR

STAGER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from harness.cache import locked, staged_dir
    final = Path(sys.argv[1])
    with locked(final), staged_dir(final) as tmp:
        (tmp / "big").write_bytes(b"x" * 1_000_000)
        print(tmp, flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills us)
    """
)


@pytest.fixture
def stager() -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(final: Path) -> tuple[subprocess.Popen[str], Path]:
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGER, str(final)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc, Path(proc.stdout.readline().strip())

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_staging_dir_of_a_killed_run_is_swept(tmp_path: Path, stager: Any) -> None:
    final = tmp_path / "kernels/entry"
    proc, left = stager(final)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left.is_dir()  # what a killed fetch leaves
    others = [tmp_path / "kernels/.entry.1.abcdefgh", tmp_path / "kernels/.other.abcdefgh"]
    for other in others:
        other.mkdir()  # another entry's, and not a staging dir at all: left alone
    with locked(final), staged_dir(final) as tmp:
        (tmp / "done").touch()
    assert not left.exists() and (final / "done").is_file()
    assert all(o.is_dir() for o in others)


def test_staging_dir_of_a_live_run_is_kept(tmp_path: Path, stager: Any) -> None:
    final = tmp_path / "kernels/entry"
    live, kept = stager(final)
    dead, gone = stager(tmp_path / "kernels/entry2")
    dead.kill()
    dead.wait()
    assert sweep_staging(final) == []  # its owner holds its flock
    assert [p for p, _ in sweep_staging(tmp_path / "kernels/entry2")] == [gone]
    assert kept.is_dir() and not gone.exists()
    live.stdin.close()
    live.wait()
    assert not kept.exists() and (final / "big").is_file()


def test_verify_sweeps_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stager: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    proc, left = stager(tmp_path / "kernels/debian-9.9.0-1-amd64_1.0-1")
    proc.kill()
    proc.wait()
    download = tmp_path / "debs/.dl.abcd_123"  # an old-style temp dir of apt-get download
    download.mkdir(parents=True)
    (download / "partial.deb").write_bytes(b"x" * 2**20)
    assert main(["kernels", "verify"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{left}: removed, left by a killed run (1.0 MiB)",
        f"{download}: removed, left by a killed run (1.0 MiB)",
        f"no cached kernels in {tmp_path}",
    ]
    assert not left.exists() and not download.exists()


def test_download_dir_sweep_keeps_a_live_one(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import sys, tempfile
            from pathlib import Path
            from harness.cache import hold_dir
            tmp = tempfile.mkdtemp(prefix=".dl.", dir=sys.argv[1])
            fd = hold_dir(Path(tmp))
            print(tmp, flush=True)
            sys.stdin.read()
            """
        ), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    live = Path(holder.stdout.readline().strip())
    try:
        assert sweep_owned(tmp_path, DOWNLOAD_DIR) == [] and live.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert [p for p, _ in sweep_owned(tmp_path, DOWNLOAD_DIR)] == [live]
