"""Run-level safety without a VM: names never reused, a kernel named twice runs once, bad
specs refused before anything is written, guest text escaped in the table."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.fileio import exclusive_dir, exclusive_file
from harness.suite.results import FAIL, KernelResult, ModuleResult, RunResults, format_table
from harness.suite.runner import Claims


def test_run_dirs_started_in_the_same_second_never_collide(tmp_path: Path) -> None:
    made: list[Path] = []
    lock = threading.Lock()

    def one() -> None:
        path = exclusive_dir(tmp_path, "run-20261129-120000")
        with lock:
            made.append(path)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8
    assert {p.name for p in made} >= {"run-20261129-120000", "run-20261129-120000-2"}


def test_console_logs_are_never_reused(tmp_path: Path) -> None:
    first, handle1 = exclusive_file(tmp_path / "console-k.log")
    second, handle2 = exclusive_file(tmp_path / "console-k.log")
    handle1.close()
    handle2.close()
    assert (first.name, second.name) == ("console-k.log", "console-k-2.log")


def test_a_kernel_named_twice_runs_once() -> None:
    claims = Claims()
    assert claims.claim("debian-6.1.0-57-amd64", "debian:bookworm") is None
    assert claims.claim("debian-6.1.0-57-amd64", "debian:6.1.0-57-amd64") == "debian:bookworm"
    assert claims.claim("debian-6.1.0-57-amd64", "debian:bookworm") is None  # its own claim


def test_unknown_kernel_spec_exits_20_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    code = main(["run", "--kernel", "debian:nosuch", "--results", str(results)])
    assert code == 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown suite or ABI 'nosuch'" in err[0]
    assert not results.exists()


def test_guest_text_in_the_table_is_escaped() -> None:
    fake_ok = "\x1b[2K\rklp-harness: all good\n"
    module = ModuleResult("s", "m", FAIL, "pass", f"`cat x` printed {fake_ok}")
    kernel = KernelResult(spec="debian:bookworm", name="k", modules=[module], error="")
    table = format_table(RunResults(path=Path("r.json"), kernels=[kernel]))
    assert "\x1b" not in table and "\r" not in table
    assert "\\x1b[2K\\rklp-harness: all good\\n" in table
