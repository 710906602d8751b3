"""Clang LTO names (harness.klp.lto) on real data: a kallsyms excerpt of the source:7.3:lto
kernel and modules kbuild built against it with clang-19 (tests/data/lto/README)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import AmbiguousSymbolError, SymposRangeError
from harness.kernels.kernel import Kernel
from harness.klp import lto
from harness.klp.convert import ConvertReport, convert_module
from harness.klp.inspect import inspect_module, verdicts
from harness.klp.symbols import SymbolTable, load_symvers
from harness.suite.assertions import parse_kallsyms
from harness.suite.judge import judge, wants_kallsyms
from harness.suite.results import FAIL, PASS
from harness.suite.samples import find_sample
from harness.suite.transcript import load_transcript

DATA = Path(__file__).parent / "data" / "lto"
KALLSYMS = DATA / "kallsyms-7.3.4-klp-lto.excerpt"
SYMVERS = DATA / "Module.symvers-7.3.4-klp-lto.excerpt"
PROMOTED_KO = DATA / "klp_lto_promoted.ko"  # modules/lto_promoted, before conversion
DUPS_KO = DATA / "lto_dups.ko"  # tests/data/lto/lto_dups.c

SHOW_CPUINFO = "show_cpuinfo.llvm.7970177662907057069"
C_START = "c_start.llvm.7970177662907057069"
M_START = "m_start.llvm.1336643619378288778"


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.load(KALLSYMS)


def test_names_and_suffixes() -> None:
    assert lto.base_name(SHOW_CPUINFO) == "show_cpuinfo"
    assert lto.is_promoted(SHOW_CPUINFO) and not lto.is_promoted("show_cpuinfo")
    assert lto.base_name("x.llvm.") == "x.llvm." and lto.base_name(".str.5.llvm.9") == ".str.5"


def test_the_only_candidate_is_the_promoted_name(table: SymbolTable) -> None:
    # the kernel's lookup is exact: no plain show_cpuinfo exists
    assert table.exact("show_cpuinfo") == []
    (cand,) = table.candidates("show_cpuinfo")
    assert (cand.position, cand.name, cand.sympos, cand.address) == (
        1, SHOW_CPUINFO, 0, 0xFFFFFFFF81047A40,
    )  # fmt: skip
    assert table.resolve(SHOW_CPUINFO, 0).address == 0xFFFFFFFF81047A40


def test_positions_count_namesakes_in_address_order(table: SymbolTable) -> None:
    # m_start: two plain statics (kernel positions 1 and 2 of "m_start") and one promoted
    got = [(c.position, c.name, c.sympos, c.address) for c in table.candidates("m_start")]
    assert got == [
        (1, "m_start", 1, 0xFFFFFFFF810EB170),
        (2, "m_start", 2, 0xFFFFFFFF810EB1A0),
        (3, M_START, 0, 0xFFFFFFFF811FD150),
    ]
    # generic_setlease: two plain, three promoted from three files (each unique by its hash)
    cands = table.candidates("generic_setlease")
    assert [c.sympos for c in cands] == [1, 2, 0, 0, 0]
    assert len({c.name for c in cands if lto.is_promoted(c.name)}) == 3
    # a name nobody promoted keeps the plain rule
    assert [c.name for c in table.candidates("init_once")] == [""] * 5


def _convert(src: Path, dst: Path, table: SymbolTable, **kw: Any) -> ConvertReport:
    symvers = load_symvers(SYMVERS)
    return convert_module(src, dst, symtab=table, exports=symvers, versions=symvers, **kw)


def test_real_module_reaches_the_promoted_static(table: SymbolTable, tmp_path: Path) -> None:
    out = tmp_path / "klp_lto_promoted.ko"
    report = _convert(PROMOTED_KO, out, table)
    (conv,) = report.converted
    assert conv.klp_name == f".klp.sym.vmlinux.{SHOW_CPUINFO},0"
    assert (conv.referenced, conv.address, conv.relocations) == (
        "show_cpuinfo", 0xFFFFFFFF81047A40, 2,
    )  # fmt: skip
    assert f"'show_cpuinfo' is {SHOW_CPUINFO},0 in vmlinux (clang LTO)" in report.notes
    relocs = inspect_module(out)
    assert {r.symbol for r in relocs} == {f".klp.sym.vmlinux.{SHOW_CPUINFO},0"}
    (verdict,) = verdicts(relocs, table)
    assert verdict.status == "resolves" and verdict.address == 0xFFFFFFFF81047A40


def test_several_namesakes_are_refused_with_every_candidate(
    table: SymbolTable, tmp_path: Path
) -> None:
    with pytest.raises(AmbiguousSymbolError) as err:
        _convert(DUPS_KO, tmp_path / "out.ko", table, sympos={"m_start": 3})
    message = str(err.value)
    assert "'c_start' occurs 2 times in vmlinux" in message
    assert f"1 {C_START},0 (t 0xffffffff810479b0)" in message
    assert "2 c_start,0 (t 0xffffffff81240350)" in message
    assert not (tmp_path / "out.ko").exists()


def test_sympos_picks_a_namesake_and_the_kernels_position(
    table: SymbolTable, tmp_path: Path
) -> None:
    report = _convert(DUPS_KO, tmp_path / "a.ko", table, sympos={"c_start": 1, "m_start": 3})
    got = {c.referenced: c.klp_name for c in report.converted}
    assert got == {
        "c_start": f".klp.sym.vmlinux.{C_START},0",
        "m_start": f".klp.sym.vmlinux.{M_START},0",
    }
    # the 2nd of all m_start namesakes is the 2nd plain m_start: the kernel's position 2
    report = _convert(DUPS_KO, tmp_path / "b.ko", table, sympos={"c_start": 2, "m_start": 2})
    got = {c.referenced: c.klp_name for c in report.converted}
    assert got == {"c_start": ".klp.sym.vmlinux.c_start,0", "m_start": ".klp.sym.vmlinux.m_start,2"}
    assert all(v.ok for v in verdicts(inspect_module(tmp_path / "b.ko"), table))
    with pytest.raises(SymposRangeError, match=r"sympos 4 for 'm_start' but vmlinux has only 3"):
        _convert(DUPS_KO, tmp_path / "c.ko", table, sympos={"c_start": 1, "m_start": 4})


def test_inspect_refuses_a_name_without_its_suffix(table: SymbolTable, tmp_path: Path) -> None:
    # Converted for a kernel where show_cpuinfo was plain (no LTO), or another LTO build
    # (another hash): the exact lookup of this kernel finds neither, and says what it has.
    for other in ("show_cpuinfo", "show_cpuinfo.llvm.1"):
        elsewhere = SymbolTable.parse(f"ffffffff81047a40 t {other}\n", "other build")
        out = tmp_path / "other.ko"
        _convert(PROMOTED_KO, out, elsewhere)
        (verdict,) = verdicts(inspect_module(out), table)
        assert verdict.status == "not-found"
        assert verdict.message == (
            f"symbol '{other}' not found in symbol table; the kernel matches names exactly "
            f"(clang LTO suffixes included): this table has {SHOW_CPUINFO}"
        )


def _lto_kernel(config: Path) -> Kernel:
    return Kernel(
        spec="source:7.3:lto", name="source-7.3-lto", release="7.3.4-klp-lto",
        package_version="7.3.4-1~bpo13+1+f0cd7e8956f0", vmlinuz=DATA / "none",
        modules_dir=DATA, config=config, headers=DATA, symvers=SYMVERS, kallsyms=KALLSYMS,
    )  # fmt: skip


def test_captured_lto_step_passes_and_is_not_applicable_elsewhere(tmp_path: Path) -> None:
    # A real step of modules/lto_promoted on the booted source:7.3:lto kernel (no KASLR in
    # the source configs: the guest's addresses are the table's).
    transcript = load_transcript(DATA / "lto_promoted.transcript.json")
    sample = find_sample("lto_promoted")
    wanted = sample.expectation(_lto_kernel(DATA / "config.excerpt"))
    guest = parse_kallsyms(KALLSYMS.read_text(), "lto kallsyms")
    result = judge(transcript, wanted, guest if wants_kallsyms(transcript, wanted) else None)
    assert result.outcome == PASS, result.reason
    assert any("1 of 2 klp relocations verified in memory" in e for e in result.evidence)
    # a %pS line naming the plain, unsuffixed name is not what an LTO kernel prints
    plain = tuple(
        replace(c, kernel=tuple(k.replace(f"{SHOW_CPUINFO}+", "show_cpuinfo+") for k in c.kernel))
        for c in transcript.commands
    )
    assert judge(replace(transcript, commands=plain), wanted, guest).outcome == FAIL
    gcc = tmp_path / "config"
    gcc.write_text("CONFIG_LIVEPATCH=y\nCONFIG_KALLSYMS_ALL=y\n")
    assert sample.expectation(_lto_kernel(gcc)).outcome == "not-applicable"


@pytest.mark.source_kernel
@pytest.mark.vm
def test_lto_kernel_runs_the_promoted_sample(tmp_path: Path) -> None:
    """source:7.3:lto builds with clang-19 ThinLTO (or comes from the cache; about 25 min on
    2 shared cores), boots, and modules/lto_promoted passes there."""
    import json
    import subprocess
    import sys

    from harness.kernels.acquire import acquire

    kernel = acquire("source:7.3:lto")
    assert kernel.config_value("LTO_CLANG_THIN") == "y" and kernel.config_value("LIVEPATCH") == "y"
    assert "clang version" in kernel.config_value("CC_VERSION_TEXT")
    table = SymbolTable.load(kernel.kallsyms)
    assert table.candidates("show_cpuinfo")[0].name.startswith("show_cpuinfo.llvm.")
    argv = [sys.executable, "-m", "harness.cli.main", "run", "--kernel", "source:7.3:lto"]
    argv += ["--module", "lto_promoted", "--results", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (results,) = tmp_path.glob("run-*/results.json")
    (only,) = json.loads(results.read_text())["kernels"][0]["modules"]
    assert only["outcome"] == "pass"
    assert only["converted"][0].startswith("vmlinux.show_cpuinfo.llvm.")
