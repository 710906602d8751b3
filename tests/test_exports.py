"""Exports restricted to named modules (7.x `module:` namespaces) are converted like unexported
symbols; exports in an ordinary namespace stay exports, with a warning when not imported.
Target data: real excerpts of Debian 7.3.4's Module.symvers and kallsyms (tests/data/exports)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from elfbuild import compile_module, have_gcc

from harness.cli.main import main
from harness.klp.convert import ConvertReport, convert_module
from harness.klp.exports import Exports, load_exports, module_match
from harness.klp.symbols import SymbolTable, load_symvers

DATA = Path(__file__).parent / "data" / "exports"
SYMVERS = DATA / "symvers-debian-7.3.4-amd64.excerpt"
KALLSYMS = DATA / "kallsyms-debian-7.3.4-amd64.excerpt"

# kptr_restrict: EXPORT_SYMBOL_FOR_MODULES(..., "printf_kunit") on 7.x; dma_buf_export: DMA_BUF
SOURCE = r"""
extern int kptr_restrict;
extern void *dma_buf_export(const void *info);
extern int _printk(const char *fmt, ...);
int use(void) { _printk("%d", kptr_restrict); return dma_buf_export(0) != 0; }
#define MODINFO(id, text) \
    static const char id[] __attribute__((section(".modinfo"), used, aligned(1))) = text
MODINFO(lic, "license=GPL");
#ifdef IMPORT
MODINFO(ns, "import_ns=DMA_BUF");
#endif
#ifdef NAMED
MODINFO(name, "name=printf_kunit");
#endif
#ifdef INTREE
MODINFO(intree, "intree=Y");
#endif
"""

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")


def _convert(tmp: Path, *defines: str, exports: Mapping[str, int] | None = None) -> ConvertReport:
    src = compile_module(tmp, "user_" + "_".join(d.lower() for d in defines), defines, SOURCE)
    table = SymbolTable.load(KALLSYMS)
    chosen = load_exports(SYMVERS) if exports is None else exports
    return convert_module(
        src, tmp / f"{src.stem}.klp.o", symtab=table, exports=chosen, versions=chosen
    )


def test_load_exports_keeps_namespaces() -> None:
    exports = load_exports(SYMVERS)
    assert isinstance(exports, Mapping) and dict(exports) == load_symvers(SYMVERS)
    assert exports.get("klp_enable_patch") == 0  # the guard's CRC lookup works unchanged
    assert exports.info["kptr_restrict"].restricted_to == "printf_kunit"
    assert exports.info["write_ibpb"].restricted_to == "kvm,kvm-amd,kvm-intel"
    assert exports.info["dma_buf_export"].namespace == "DMA_BUF"
    assert exports.info["dma_buf_export"].restricted_to is None
    assert exports.info["_printk"].namespace == ""


@pytest.mark.parametrize(
    ("name", "patterns", "allowed"),
    [
        ("kvm_intel", "kvm,kvm-amd,kvm-intel", True),  # '-' and '_' compare equal
        ("kvm", "kvm,kvm-amd,kvm-intel", True),
        ("kvm_amd_x", "kvm,kvm-amd,kvm-intel", False),
        ("kvm_amd_x", "kvm-*", True),  # a tail glob
        ("printf_kunit", "printf_kunit", True),
        ("klp_restricted_export", "printf_kunit", False),
        ("", "printf_kunit", False),
    ],
)
def test_module_match(name: str, patterns: str, allowed: bool) -> None:
    assert module_match(name, patterns) is allowed


def test_restricted_export_is_converted_with_a_note(tmp_path: Path) -> None:
    report = _convert(tmp_path)
    assert [c.klp_name for c in report.converted] == [".klp.sym.vmlinux.kptr_restrict,0"]
    assert report.converted[0].address == 0xFFFFFFFF83558AC0
    assert {"_printk", "dma_buf_export"} <= set(report.left_alone)
    (note,) = report.notes
    assert note.startswith("kptr_restrict: EXPORT_SYMBOL_GPL in namespace module:printf_kunit")
    assert "not to user" in note
    # the ordinary namespace: still an export, but said loudly
    (warning,) = [w for w in report.warnings if "DMA_BUF" in w]
    assert "'dma_buf_export'" in warning and 'MODULE_IMPORT_NS("DMA_BUF")' in warning


def test_an_imported_namespace_is_not_warned_about(tmp_path: Path) -> None:
    report = _convert(tmp_path, "IMPORT")
    assert not [w for w in report.warnings if "DMA_BUF" in w]
    assert "dma_buf_export" in report.left_alone


@pytest.mark.parametrize("defines", [("NAMED", "INTREE"), ("NAMED",)])
def test_the_named_module_keeps_its_export(tmp_path: Path, defines: tuple[str, ...]) -> None:
    # By name alone, in tree or not: Debian 7.3.4 loaded an out-of-tree module named
    # printf_kunit with an ordinary reference to kptr_restrict (the in-tree restriction
    # proposed in 2025 is not there).
    report = _convert(tmp_path, "IMPORT", *defines)
    assert report.converted == () and report.notes == ()
    assert "kptr_restrict" in report.left_alone


def test_a_plain_name_set_behaves_as_before(tmp_path: Path) -> None:
    names = set(load_symvers(SYMVERS))
    report = _convert(tmp_path, exports=dict.fromkeys(names, 0))
    assert report.converted == () and report.notes == ()
    assert isinstance(load_exports(SYMVERS), Exports)


def test_convert_cli_prints_the_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = compile_module(tmp_path, "clim", (), SOURCE)
    out = tmp_path / "clim.klp.o"
    argv = ["convert", "--system-map", str(KALLSYMS), "--symvers", str(SYMVERS), "-v"]
    assert main([*argv, str(src), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        "note: kptr_restrict: EXPORT_SYMBOL_GPL in namespace module:printf_kunit: exported only "
        "to module(s) printf_kunit, not to clim; converted like an unexported symbol"
    ) in captured.out
    assert "converted: .klp.sym.vmlinux.kptr_restrict,0" in captured.out
    assert "namespace DMA_BUF but the module does not import it" in captured.err


def test_convert_json_has_the_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    src = compile_module(tmp_path, "jsonm", (), SOURCE)
    argv = ["convert", "--system-map", str(KALLSYMS), "--symvers", str(SYMVERS), "--json"]
    assert main([*argv, str(src), "-o", str(tmp_path / "jsonm.klp.o")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["notes"][0].startswith("kptr_restrict: EXPORT_SYMBOL_GPL in namespace module:")
    assert [c["name"] for c in report["converted"]] == ["kptr_restrict"]
