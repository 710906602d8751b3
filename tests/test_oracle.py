"""The convert-the-world oracle on a small compiled module: a faithful conversion loads to the
same images; a klp symbol with the wrong position, or an ambiguous one, does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc
from oracle.allowed import explain
from oracle.compare import (
    IMAGE,
    LOAD_CONVERTED,
    LOAD_ORIGINAL,
    UNCONVERTED,
    Difference,
    compare,
)
from oracle.loader import KernelTable, LoadError

from harness.klp.convert import convert_module
from harness.klp.symbols import SymbolTable

# A second, local kernel_clone after the global one: the export is position 1 of 2.
TABLE = KALLSYMS_EXCERPT.read_text() + "ffffffff81f00000 t kernel_clone\n"
# Left alone: resolved as exports (klp_enable_patch: the livepatch guard's, exported by
# every CONFIG_LIVEPATCH kernel, the only kind that resolves klp relocations).
OTHER_MODULES = frozenset({"_printk", "init_task", "klp_enable_patch"})

needs_gcc = pytest.mark.skipif(not have_gcc(), reason="needs gcc and ld")

# Every relocation type the x86-64 loader takes, except R_X86_64_32: a kernel address never
# fits it (the loader refuses the module with "overflow in relocation type 10").
SOURCE = r"""
extern int kernel_clone(void *args);
extern void do_exit(long code) __attribute__((noreturn));
extern char *saved_command_line;
extern int _printk(const char *fmt, ...);
extern char init_task[];
void *table[] = { (void *)kernel_clone, (void *)do_exit, &saved_command_line };  /* 64 */
int use_clone(void *a) { return kernel_clone(a) + _printk("x"); }                 /* PLT32 */
char first_char(void) { return saved_command_line[0] + init_task[0]; }           /* PC32 */
unsigned long addr32s(void) { return (unsigned long)&saved_command_line; }       /* 32S */
asm(".pushsection .data.asm,\"aw\"\n .quad kernel_clone - .\n .popsection\n"); /* PC64 */
"""


def _convert(tmp_path: Path, sympos: dict[str, int]) -> tuple[bytes, bytes, int]:
    src = compile_module(tmp_path, source=SOURCE)
    out = tmp_path / "out.o"
    symtab = SymbolTable.parse(TABLE, "table")
    report = convert_module(src, out, symtab=symtab, exports=set(OTHER_MODULES), sympos=sympos)
    return src.read_bytes(), out.read_bytes(), report.relocations


@needs_gcc
def test_faithful_conversion_gives_identical_images(tmp_path: Path) -> None:
    original, converted, moved = _convert(tmp_path, {"kernel_clone": 1})
    table = KernelTable(TABLE)
    for seed in (1, 2, 3):
        verdict = compare(original, converted, table, OTHER_MODULES, seed)
        assert verdict.identical, verdict.differences
        assert verdict.klp_relocations == moved > 5
        assert verdict.sections > 3


@needs_gcc
def test_wrong_sympos_is_a_difference(tmp_path: Path) -> None:
    original, converted, _ = _convert(tmp_path, {"kernel_clone": 1})
    good = b".klp.sym.vmlinux.kernel_clone,1\0"
    assert converted.count(good) == 1
    tampered = converted.replace(good, b".klp.sym.vmlinux.kernel_clone,2\0")
    verdict = compare(original, tampered, KernelTable(TABLE), OTHER_MODULES, 7)
    assert verdict.differences, "a klp symbol at the wrong position went unnoticed"
    assert {d.kind for d in verdict.differences} == {IMAGE}
    assert all("klp R_X86_64_" in d.detail for d in verdict.differences)
    assert any("kernel_clone" in d.detail for d in verdict.differences)


@needs_gcc
def test_ambiguous_sympos_is_refused(tmp_path: Path) -> None:
    original, converted, _ = _convert(tmp_path, {"kernel_clone": 0})
    verdict = compare(original, converted, KernelTable(TABLE), OTHER_MODULES, 7)
    assert [d.kind for d in verdict.differences] == [LOAD_CONVERTED]
    assert "unresolvable ambiguity for symbol 'kernel_clone'" in verdict.differences[0].detail


@needs_gcc
def test_unconverted_reference_and_unknown_symbol(tmp_path: Path) -> None:
    original, _, _ = _convert(tmp_path, {"kernel_clone": 1})
    # the original compared with itself: every vmlinux reference is still there
    verdict = compare(original, original, KernelTable(TABLE), OTHER_MODULES, 7)
    assert [d.kind for d in verdict.differences] == [UNCONVERTED]
    assert "kernel_clone" in verdict.differences[0].detail
    # with none of its symbols exported anywhere, the loader refuses the original
    empty = KernelTable("ffffffff81000000 T other\n")
    verdict = compare(original, original, empty, frozenset(), 7)
    assert [d.kind for d in verdict.differences] == [LOAD_ORIGINAL, LOAD_CONVERTED]
    assert verdict.differences[0].detail.startswith("Unknown symbol ")


def test_klp_lookup_follows_the_kernel() -> None:
    table = KernelTable(
        "0000000000000000 A fixed_percpu_data\n"
        "ffffffff81000000 T dup\nffffffff81000010 t dup\nffffffff81000020 T one\n"
    )
    assert table.klp_lookup("one", 0) == 0xFFFFFFFF81000020
    assert table.klp_lookup("dup", 2) == 0xFFFFFFFF81000010
    assert table.exported("dup") == 0xFFFFFFFF81000000
    assert table.exported_position("dup") == 1
    for name, pos, why in [
        ("dup", 0, "unresolvable ambiguity"),
        ("dup", 3, "symbol position 3"),
        ("fixed_percpu_data", 0, "not found in symbol table"),
        ("none", 0, "symbol position 0"),
    ]:
        with pytest.raises(LoadError, match=why):
            table.klp_lookup(name, pos)


def test_allow_list_needs_the_fact() -> None:
    at_zero = KernelTable("0000000000000000 A fixed_percpu_data\nffffffff81000000 T real\n")
    for name, allowed in (("fixed_percpu_data", True), ("real", False), ("absent", False)):
        diff = Difference(LOAD_CONVERTED, f"symbol '{name}' not found in symbol table")
        assert (explain(diff, at_zero) is not None) is allowed, name
    assert explain(Difference(IMAGE, "symbol 'fixed_percpu_data' not found"), at_zero) is None
