"""Names from input files never reach a terminal raw: a crafted symbol or section name, a
System.map type letter or a results file cannot draw a fake `klp-harness: ... all good` line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, write_symvers

from harness.cli.main import main
from harness.errors import RelocationTypeError, SymbolNotFoundError
from harness.klp.inspect import format_table, verdicts
from harness.klp.symbols import SymbolTable

# Clears the line, returns to its start and prints a verdict of its own.
PAYLOAD = "\x1b[2K\rklp-harness: all good\n"
SHOWN = r"\x1b[2K\rklp-harness: all good\n"
# What a terminal would act on: C0 controls but tab and LF, DEL, C1 controls (0x9b is CSI).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
RESULTS = Path(__file__).parent / "data" / "results" / "bookworm" / "results.json"

needs_gcc = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")


def _clean(text: str) -> None:
    assert not CONTROL.search(text), repr(text)


def _one_line(err: str) -> str:
    _clean(err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("klp-harness: "), err
    return lines[0]


def _patch(path: Path, old: bytes, new: bytes) -> None:
    """Replace `old` by the same number of bytes: the ELF layout stays valid."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("escape")
    placeholder = "e" * len(PAYLOAD)
    source = f"extern int {placeholder}(void);\nint call(void) {{ return {placeholder}(); }}\n"
    evil = compile_module(tmp, "evil", source=source)
    _patch(evil, b"\0" + placeholder.encode() + b"\0", b"\0" + PAYLOAD.encode() + b"\0")
    bad = compile_module(tmp, "bad", ("BAD_RELOC",))
    # ".rela.data.asm" (the name the refused relocation's message shows) starts with the payload
    _patch(bad, b"\0.rela.data.asm\0", b"\0\x1b[2K\r.data.asm\0")
    write_symvers(tmp)
    shutil.copy(KALLSYMS_EXCERPT, tmp / "kallsyms")
    return tmp


def _convert(work: Path, module: str, *extra: str) -> list[str]:
    return ["convert", str(work / module), "--system-map", str(work / "kallsyms"), *extra]


@needs_gcc
def test_error_naming_a_crafted_symbol(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out.ko"
    rc = main(_convert(work, "evil.o", "-o", str(out), "--symvers", str(work / "Module.symvers")))
    line = _one_line(capsys.readouterr().err)
    assert rc == SymbolNotFoundError.exit_code and SHOWN in line
    assert not out.exists()


@needs_gcc
def test_error_naming_a_crafted_section(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        _convert(
            work,
            "bad.o",
            "-o",
            str(work / "bad.ko"),
            "--symvers",
            str(work / "Module.symvers"),
            "--sympos",
            "active_show=1",
        )
    )
    line = _one_line(capsys.readouterr().err)
    assert rc == RelocationTypeError.exit_code and r"\x1b[2K\r.data.asm+0x" in line


@needs_gcc
def test_convert_verbose_and_inspect(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "forced.ko"
    rc = main(_convert(work, "evil.o", "-o", str(out), "--symbol", PAYLOAD, "--force", "-v"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    _clean(captured.out + captured.err)
    assert f"converted: .klp.sym.vmlinux.{SHOWN},0 (1 relocations)" in captured.out
    assert _one_line(captured.err).startswith(f"klp-harness: warning: '{SHOWN}' is not in")
    # inspect: the table and the verdict (not found) show the name escaped
    assert main(["inspect", str(out), "--system-map", str(work / "kallsyms")]) == 1
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    assert captured.out.count(SHOWN) == 3  # the table row, the verdict and its message
    assert f"symbol '{SHOWN}' not found" in captured.out
    # --json keeps the real name, escaped by JSON itself
    assert main(["inspect", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    _clean(text)
    assert json.loads(text)["relocations"][0]["name"] == PAYLOAD


def test_symbol_table_text_is_escaped() -> None:
    """A System.map line can carry ESC (not whitespace) in a name, a type or a [module]."""
    table = SymbolTable.parse(
        "ffffffff81000000 \x1b d\x1bup\nffffffff81000010 t d\x1bup\n"
        "ffffffffc0000000 t h\t[m\x1bod]\n",
        "map\x1b",
    )
    res = table.resolve("d\x1bup", 0)
    assert res.status == "ambiguous"
    _clean(res.message)
    assert r"d\x1bup" in res.message and r"(\x1b 0xffffffff81000000)" in res.message
    assert r"object 'm\x1bod'" in table.resolve("h", 2, "m\x1bod").message
    assert table.source == r"map\x1b"


def test_inspect_table_is_escaped() -> None:
    from harness.klp.inspect import KlpReloc

    name = f".klp.sym.vmlinux.{PAYLOAD},0"
    rel = KlpReloc(
        ".klp.rela.vmlinux..text",
        "vmlinux",
        ".te\rxt",
        name,
        "vmlinux",
        PAYLOAD,
        0,
        "R_X86_64_PC32",
        4,
        -4,
        True,
    )
    text = format_table([rel], verdicts([rel], SymbolTable.load(KALLSYMS_EXCERPT)))
    _clean(text.replace("\n", ""))
    assert len(text.splitlines()) == 4 and r".te\rxt" in text


def _hostile_results(tmp: Path, sample: str) -> tuple[Path, Path]:
    """A failing cell named `sample` (a regression against the untouched file)."""
    data = json.loads(RESULTS.read_text())
    module = data["kernels"][0]["modules"][0]
    base = tmp / "base" / "results.json"
    base.parent.mkdir()
    module["sample"] = sample
    base.write_text(json.dumps(data))
    module.update(outcome="fail", reason=f"why {sample}", evidence=[sample, "\x9b2K"])
    now = tmp / "now" / "results.json"
    now.parent.mkdir()
    now.write_text(json.dumps(data))
    return now, base


@pytest.mark.parametrize("fmt", ["md", "html", "junit", "json"])
def test_report_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    sample = "\x1b[2K\r\x9b2Kall\x7f good"
    now, base = _hostile_results(tmp_path, sample)
    assert main(["report", str(now), "--baseline", str(base), "--format", fmt]) == 1
    captured = capsys.readouterr()
    _clean(captured.out)
    line = _one_line(captured.err)
    shown = r"\x1b[2K\r\x9b2Kall\x7f good"
    assert line == f"klp-harness: regression: {shown} on debian:bookworm: fail"


def test_report_error_message_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(RESULTS.read_text())
    data["kernels"][0]["config"][PAYLOAD] = 1  # the schema's message names the key
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert main(["report", str(path)]) == 25
    assert "klp-harness/results" not in _one_line(capsys.readouterr().err)
