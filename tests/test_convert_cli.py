"""`klp-harness convert` / `inspect` on bad input: one line, a distinct status, no output file."""

from __future__ import annotations

import gc
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, write_symvers

from harness import errors
from harness.cli.main import main

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    compile_module(tmp, "plain")
    compile_module(tmp, "bad", ("BAD_RELOC",))
    compile_module(
        tmp, "user", source="extern int helper(int);\nint call(void) { return helper(1); }\n"
    )
    compile_module(tmp, "prov", source="int helper(int x) { return x; }\n")
    write_symvers(tmp)
    shutil.copy(KALLSYMS_EXCERPT, tmp / "kallsyms")
    return tmp


def _patched(work: Path, name: str, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray((work / "plain.o").read_bytes())
    edit(data)
    path = work / f"{name}.o"
    path.write_bytes(data)
    return path


def _no_symtab(data: bytearray) -> None:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    for i in range(shnum):
        at = shoff + i * 64 + 4
        if struct.unpack_from("<I", data, at)[0] == 2:
            struct.pack_into("<I", data, at, 1)


EDITS: dict[str, Callable[[bytearray], None]] = {
    "class32": lambda d: d.__setitem__(4, 1),
    "bigendian": lambda d: d.__setitem__(5, 2),
    "riscv": lambda d: struct.pack_into("<H", d, 0x12, 243),
    "exec": lambda d: struct.pack_into("<H", d, 0x10, 2),
    "nosymtab": _no_symtab,
}

CASES = [  # (case, module, extra args, error class, text in the message)
    ("not-elf", "text", [], errors.NotElfError, "not an ELF file"),
    ("truncated", "trunc", [], errors.NotElfError, "truncated"),
    ("class32", "class32", [], errors.UnsupportedElfError, "only x86-64"),
    ("bigendian", "bigendian", [], errors.UnsupportedElfError, "only x86-64"),
    ("machine", "riscv", [], errors.UnsupportedElfError, "machine EM_RISCV; only x86-64"),
    ("not-rel", "exec", [], errors.UnsupportedElfError, "ELF type ET_EXEC, expected a relocatable"),
    ("no-symtab", "nosymtab", [], errors.NoSymtabError, "no symbol table"),
    ("missing", "missing", [], errors.FileReadError, "cannot read"),
    ("ambiguous", "plain", [], errors.AmbiguousSymbolError, "active_show"),
    (
        "not-found",
        "plain",
        ["--symbol", "kernel_clone", "--sympos", "active_show=1", "--system-map", "small.map"],
        errors.SymbolNotFoundError,
        "kernel_clone",
    ),
    ("range", "plain", ["--sympos", "active_show=7"], errors.SymposRangeError, "only 2"),
    (
        "module-target",
        "user",
        ["--object-symbols", "prov=PROV"],
        errors.ModuleTargetError,
        "livepatch",
    ),
    ("reloc-type", "bad", ["--sympos", "active_show=1"], errors.RelocationTypeError, "R_X86_64_16"),
    ("bad-map", "plain", ["--system-map", "bad.map"], errors.SymbolFileError, "bad.map:2:"),
    (
        "bad-symvers",
        "plain",
        ["--symvers", "bad.symvers"],
        errors.SymbolFileError,
        "bad.symvers:1:",
    ),
]


def _prepare(work: Path, module: str) -> Path:
    (work / "text.o").write_text("hello\n")
    (work / "trunc.o").write_bytes((work / "plain.o").read_bytes()[:40])
    (work / "small.map").write_text("ffffffff81000000 T other\n")
    (work / "bad.map").write_text("ffffffff81000000 T ok\nnot a map line at all\n")
    (work / "bad.symvers").write_text("garbage\n")
    if module in EDITS:
        return _patched(work, module, EDITS[module])
    return work / f"{module}.o"


def _run(
    work: Path, module: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, Path]:
    out = work / "out" / "result.ko"
    out.parent.mkdir(exist_ok=True)
    args = ["convert", str(module), "-o", str(out)]
    flags = [str(work / a) if a.endswith((".map", ".symvers")) else a for a in extra]
    flags = [a.replace("PROV", str(work / "prov.o")) for a in flags]
    if "--system-map" not in flags:
        flags += ["--system-map", str(work / "kallsyms")]
    if "--symvers" not in flags:
        flags += ["--symvers", str(work / "Module.symvers")]
    rc = main(args + flags)
    return rc, capsys.readouterr().err, out


@pytest.mark.parametrize("case, module, extra, cls, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    work: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    module: str,
    extra: list[str],
    cls: type[errors.HarnessError],
    text: str,
) -> None:
    path = _prepare(work, module)
    rc, err, out = _run(work, path, extra, capsys)
    assert rc == cls.exit_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("klp-harness: "), err
    assert text in lines[0] and "Traceback" not in err
    if case not in ("missing",):
        assert str(path.name) in lines[0] or "bad." in lines[0]
    assert list(out.parent.iterdir()) == []  # no output, no temp file


def test_exit_codes_are_distinct() -> None:
    codes = [c[3].exit_code for c in CASES]
    assert len(set(codes)) == len({c[3] for c in CASES})


def test_usage_errors(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = str(work / "plain.o")
    assert (
        main(["convert", plain, "-o", str(work / "x.o"), "--system-map", str(work / "kallsyms")])
        == 2
    )
    assert "--symvers" in capsys.readouterr().err
    assert (
        main(["convert", plain, "--symbol", "do_exit", "--system-map", str(work / "kallsyms")]) == 2
    )  # neither -o nor -i
    assert (
        main(
            [
                "convert",
                plain,
                "-o",
                str(work / "x.o"),
                "--symbol",
                "do_exit",
                "--sympos",
                "do_exit=x",
                "--system-map",
                str(work / "kallsyms"),
            ]
        )
        == 2
    )
    assert not (work / "x.o").exists()


def test_convert_then_inspect(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "good.ko"
    rc = main(
        [
            "convert",
            str(work / "plain.o"),
            "-o",
            str(out),
            "--system-map",
            str(work / "kallsyms"),
            "--symvers",
            str(work / "Module.symvers"),
            "--sympos",
            "active_show=2",
            "-v",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "left alone: _printk" in text and "15 relocations" in text
    assert main(["inspect", str(out), "--system-map", str(work / "kallsyms")]) == 0
    assert "resolves to 0xffffffff816c71a0" in capsys.readouterr().out
    rc = main(
        [
            "convert",
            str(out),
            "-o",
            str(work / "again.ko"),
            "--system-map",
            str(work / "kallsyms"),
            "--symvers",
            str(work / "Module.symvers"),
        ]
    )
    assert rc == 0 and "already converted" in capsys.readouterr().out
    # sympos 0 on an ambiguous name: converted with a warning, then judged as the kernel would
    forced = work / "amb.ko"
    assert (
        main(
            [
                "convert",
                str(work / "plain.o"),
                "-o",
                str(forced),
                "--system-map",
                str(work / "kallsyms"),
                "--symvers",
                str(work / "Module.symvers"),
                "--sympos",
                "active_show=0",
            ]
        )
        == 0
    )
    assert "warning" in capsys.readouterr().err
    assert main(["inspect", str(forced), "--system-map", str(work / "kallsyms"), "--json"]) == 1
    assert '"ambiguous"' in capsys.readouterr().out


def test_subprocess_one_line(work: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli.main",
            "convert",
            str(work / "text.o"),
            "-o",
            str(work / "never.ko"),
            "--symbol",
            "x",
            "--system-map",
            str(work / "kallsyms"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == errors.NotElfError.exit_code
    assert proc.stderr.count("\n") == 1 and not (work / "never.ko").exists()


@pytest.mark.parametrize("ok", [True, False])
def test_gc_paused_for_the_command_only(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ok: bool
) -> None:
    """convert pauses the GC while it runs (reading a kernel's symbol table triggers costly
    collections) and only then: an embedding process (this one) gets it back, after success
    and after an error alike."""
    import harness.klp.convert

    seen: list[bool] = []
    real = harness.klp.convert.convert_module

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(harness.klp.convert, "convert_module", spy)
    module = work / ("plain.o" if ok else "missing.o")
    args = ["convert", str(module), "-o", str(work / "undone.ko"), "--sympos", "active_show=2"]
    args += ["--system-map", str(work / "kallsyms"), "--symvers", str(work / "Module.symvers")]
    assert (main(args) == 0) == ok
    capsys.readouterr()
    assert seen == [False] and gc.isenabled()


def test_converter_needs_no_numpy(work: Path) -> None:
    """harness.klp is standard library only (numpy's import alone took longer than converting
    amdgpu.ko): convert and inspect run where `import numpy` fails."""
    script = (
        "import sys\n"
        "sys.modules['numpy'] = None  # from here on, `import numpy` raises ImportError\n"
        "from harness.cli.main import main\n"
        "convert = sys.argv[1:]\n"
        "table = convert[convert.index('--system-map') :][:2]\n"
        "output = convert[convert.index('-o') + 1]\n"
        "print(main(convert), main(['inspect', output, *table]))\n"
    )
    out = work / "nonumpy.ko"
    args = ["convert", str(work / "plain.o"), "-o", str(out), "--sympos", "active_show=2"]
    args += ["--system-map", str(work / "kallsyms"), "--symvers", str(work / "Module.symvers")]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 0" and out.exists()
