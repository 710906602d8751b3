"""`-o` onto a FIFO or a device node writes into it and leaves it in place; a FIFO, a device
or an oversized file given as an input is refused with one line, never read without end.

The CLI runs in a child under a 1 GiB address-space limit and a timeout, so a regression (a
read of /dev/zero, a blocking open of a FIFO) fails the test instead of taking the machine."""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, write_symvers

from harness.errors import FileReadError, ReportError, SymbolFileError

RESULTS = Path(__file__).parent / "data" / "results" / "bookworm"
ADDRESS_SPACE = 1 << 30
needs_gcc = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KLP_HARNESS_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit,
        env=env,
    )


def one_line(proc: subprocess.CompletedProcess[str], status: int, *texts: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == status, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("klp-harness: "), proc.stderr
    for text in texts:
        assert text in lines[0], proc.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("special")
    compile_module(tmp, "plain")
    write_symvers(tmp)
    shutil.copy(KALLSYMS_EXCERPT, tmp / "kallsyms")
    return tmp


def _convert_args(work: Path, module: Path | str, out: Path | str) -> list[str | Path]:
    return [
        "convert",
        module,
        "-o",
        out,
        "--system-map",
        work / "kallsyms",
        "--symvers",
        work / "Module.symvers",
        "--sympos",
        "active_show=2",
    ]


# -- item 4: -o onto a FIFO or a character device -----------------------------------------------


def _through_fifo(tmp: Path, name: str, args: list[str | Path]) -> tuple[bytes, str]:
    """Run the CLI with `-o` a FIFO read by cat; (what cat read, the CLI's stderr)."""
    fifo = tmp / name
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        proc = cli(*[fifo if a == "FIFO" else a for a in args], timeout=30)
        data, _ = reader.communicate(timeout=10)
    finally:
        reader.kill()
        reader.wait()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []
    return data, proc.stderr


@needs_gcc
def test_convert_into_a_fifo(work: Path, tmp_path: Path) -> None:
    data, _ = _through_fifo(tmp_path, "out.ko", _convert_args(work, work / "plain.o", "FIFO"))
    assert data.startswith(b"\x7fELF") and b".klp.sym.vmlinux.kernel_clone,0" in data


@needs_gcc
def test_copy_into_a_fifo(work: Path, tmp_path: Path) -> None:
    """Nothing to convert (already converted): the input is copied, through the FIFO too."""
    done = tmp_path / "done.ko"
    assert cli(*_convert_args(work, work / "plain.o", done)).returncode == 0
    data, _ = _through_fifo(tmp_path, "again.ko", _convert_args(work, done, "FIFO"))
    assert data == done.read_bytes()


def test_report_into_a_fifo(tmp_path: Path) -> None:
    data, err = _through_fifo(tmp_path, "r.md", ["report", RESULTS, "-o", "FIFO"])
    assert data.startswith(b"## klp-harness report") and "report written to" in err


def _char_device(path: Path) -> Path:
    """A private /dev/null (1:3) to write over, never the machine's own."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create device nodes here")
    return path


@needs_root
@needs_gcc
def test_convert_onto_a_char_device(work: Path, tmp_path: Path) -> None:
    null = _char_device(tmp_path / "null")
    proc = cli(*_convert_args(work, work / "plain.o", null))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["null"]


@needs_root
def test_report_onto_a_char_device(tmp_path: Path) -> None:
    null = _char_device(tmp_path / "null")
    proc = cli("report", RESULTS, "--format", "md", "-o", null)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_report_to_stdout_through_a_pipe(tmp_path: Path) -> None:
    """`-o /dev/stdout` in a pipeline: stdout is a pipe, reached through a /proc magic link.
    A private link like /dev/stdout's: a regression must not replace the machine's own."""
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    proc = cli("report", RESULTS, "--format", "json", "-o", stdout)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["failures"] == 0
    assert os.readlink(stdout) == "/proc/self/fd/1"
    assert [p.name for p in tmp_path.iterdir()] == ["stdout"]


@needs_gcc
def test_output_onto_a_directory_is_refused(work: Path, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    proc = cli(*_convert_args(work, work / "plain.o", tmp_path / "dir"))
    one_line(proc, FileReadError.exit_code, "directory")
    assert list((tmp_path / "dir").iterdir()) == []


# -- item 5: non-regular and oversized inputs ---------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("which", ["module", "system-map", "symvers"])
def test_dev_zero_as_input(work: Path, tmp_path: Path, which: str) -> None:
    args = _convert_args(work, work / "plain.o", tmp_path / "out.ko")
    flag = {"module": "convert", "system-map": "--system-map", "symvers": "--symvers"}[which]
    args[args.index(flag) + 1] = "/dev/zero"
    one_line(cli(*args), FileReadError.exit_code, "/dev/zero", "character device")
    assert list(tmp_path.iterdir()) == []


@needs_gcc
def test_dev_zero_for_inspect(work: Path, tmp_path: Path) -> None:
    one_line(cli("inspect", "/dev/zero"), FileReadError.exit_code, "character device")
    plain = work / "plain.o"
    proc = cli(
        "inspect", plain, "--system-map", work / "kallsyms", "--object-symbols", "m=/dev/zero"
    )
    one_line(proc, FileReadError.exit_code, "/dev/zero")


@needs_gcc
def test_fifo_as_module_is_not_opened(work: Path, tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: it must not be opened at all."""
    fifo = tmp_path / "in.ko"
    os.mkfifo(fifo)
    proc = cli(*_convert_args(work, fifo, tmp_path / "out.ko"), timeout=20)
    one_line(proc, FileReadError.exit_code, "FIFO")


def test_oversized_symbol_table(tmp_path: Path) -> None:
    from harness.klp.symbols import SYMBOL_FILE_LIMIT

    big = tmp_path / "System.map"
    with open(big, "wb") as handle:
        handle.truncate(SYMBOL_FILE_LIMIT + 1)  # sparse: no disk, no time
    one_line(
        cli("inspect", "/nonexistent.ko", "--system-map", big), FileReadError.exit_code, "more than"
    )


@needs_gcc
def test_empty_symvers_is_refused(work: Path, tmp_path: Path) -> None:
    """With no exports every undefined symbol (_printk too) would be converted."""
    empty = tmp_path / "Module.symvers"
    empty.write_text("\n")
    args = _convert_args(work, work / "plain.o", tmp_path / "out.ko")
    args[args.index("--symvers") + 1] = empty
    one_line(cli(*args), SymbolFileError.exit_code, "no exported symbols")
    assert not (tmp_path / "out.ko").exists()


def test_kallsyms_from_procfs() -> None:
    """/proc/kallsyms reads as a regular file of size 0: it must be read to its end."""
    from harness.klp.symbols import SymbolTable

    try:
        table = SymbolTable.load(Path("/proc/kallsyms"))
    except SymbolFileError as err:  # kptr_restrict: every address reads as 0
        assert "every address is zero" in str(err)
    else:
        assert sum(len(v) for v in table.objects["vmlinux"].values()) > 10_000


# -- report RESULTS ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01\x00\xff\xfe\x80", b"[" * 100_000])
def test_report_binary_or_deep_results(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(content)
    one_line(cli("report", path), ReportError.exit_code, "not a results file")


def test_report_dev_zero() -> None:
    one_line(cli("report", "/dev/zero"), FileReadError.exit_code, "character device")
