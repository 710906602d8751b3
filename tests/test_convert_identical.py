"""The converter's fast paths and their fallbacks write the same bytes.

Relocation sections are scanned as text (one character per entry, its symbol index), which
holds indexes up to U+10FFFF; a table with more symbols than that takes the byte-mask path.
Fields are decoded in host order and swapped on a big-endian host. (The byte-for-byte
comparison with the numpy converter this replaced, over every module of a Debian kernel,
needs the old code: it was run once, not kept here.)
"""

from __future__ import annotations

import dataclasses
import struct
from array import array
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, write_symvers
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

import harness.klp.rewrite
from harness.errors import NotElfError
from harness.klp.convert import ConvertReport, convert_module
from harness.klp.inspect import inspect_module
from harness.klp.symbols import SymbolTable, load_symvers
from harness.klp.tables import field, store

PROVIDER_A = "int helper_a(int x) { return x; }\n"
PROVIDER_B = "int helper_b(int x) { return x + 1; }\n"
# A livepatch module whose sections mix symbols of three objects, entry by entry.
MIXED_C = r"""
extern int helper_a(int); extern int helper_b(int); extern int kernel_clone(void *);
extern char *saved_command_line;
int mix(int x) { return helper_a(x) + kernel_clone(0) + helper_b(x) + helper_a(2); }
void *tab[] = { helper_b, helper_a, kernel_clone, &saved_command_line, helper_b };
static const char lp[] __attribute__((section(".modinfo"), used, aligned(1))) = "livepatch=Y";
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_gcc():
        pytest.skip("needs gcc and ld")
    tmp = tmp_path_factory.mktemp("identical")
    compile_module(tmp, "plain")
    compile_module(tmp, "anngrp", ("ANNOTATE", "GROUP"))
    compile_module(tmp, "prov_a", source=PROVIDER_A)
    compile_module(tmp, "prov_b", source=PROVIDER_B)
    compile_module(tmp, "mixed", source=MIXED_C)
    write_symvers(tmp)
    return tmp


# module: (sympos, object symbols)
CASES: dict[str, tuple[dict[str, int], dict[str, str]]] = {
    "plain": ({"active_show": 2}, {}),
    "anngrp": ({}, {}),
    "mixed": ({}, {"prov_a": "prov_a.o", "prov_b": "prov_b.o"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_byte_mask_path_writes_the_same_bytes(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    table = SymbolTable.load(KALLSYMS_EXCERPT)
    sympos, objects = CASES[name]
    object_symbols = {obj: built / file for obj, file in objects.items()}
    exports = load_symvers(built / "Module.symvers")
    fast, slow = tmp_path / "fast.o", tmp_path / "slow.o"

    def convert(dst: Path) -> ConvertReport:
        return convert_module(
            built / f"{name}.o",
            dst,
            symtab=table,
            exports=exports,
            sympos=sympos,
            object_symbols=object_symbols,
        )

    report = convert(fast)
    monkeypatch.setattr(harness.klp.rewrite, "symbol_class", lambda indexes: None)
    assert report.relocations > 0 and convert(slow) == dataclasses.replace(report, output=slow)
    assert fast.read_bytes() == slow.read_bytes()
    if name == "mixed":  # three objects' entries, interleaved, each to its own section
        names = {r.section for r in inspect_module(fast)}
        assert {n.split(".")[3] for n in names} == {"vmlinux", "prov_a", "prov_b"}


def tiny_elf(path: Path, nsyms: int, target: int, rela_symbol: int) -> Path:
    """A relocatable x86-64 object: .text, .rela.text with an R_X86_64_64 against symbol
    `rela_symbol` and one against the null symbol, and `nsyms` symbols, all unnamed and
    undefined but `target`, the global undefined `target`."""
    text = bytes(16)
    relas = struct.pack("<QQq", 0, (rela_symbol << 32) | 1, 0)
    relas += struct.pack("<QQq", 8, 1, 0)
    symtab = bytearray(24 * nsyms)
    struct.pack_into("<IBBHQQ", symtab, 24 * target, 1, 0x10, 0, 0, 0, 0)  # GLOBAL NOTYPE UND
    strtab = b"\0target\0"
    shstrtab = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0"
    contents = [text, relas, bytes(symtab), strtab, shstrtab]
    # name, type, flags, link, info, align, entsize
    headers = [
        (1, 1, 0x6, 0, 0, 16, 0),
        (7, 4, 0x40, 3, 1, 8, 24),
        (18, 2, 0, 4, target, 8, 24),
        (26, 3, 0, 0, 0, 1, 0),
        (34, 3, 0, 0, 0, 1, 0),
    ]
    offset, body, table = 64, b"", bytes(64)
    for data, (name, stype, flags, link, info, align, entsize) in zip(
        contents, headers, strict=True
    ):
        pad = -offset % align
        body += bytes(pad) + data
        offset += pad
        table += struct.pack(
            "<IIQQQQIIQQ", name, stype, flags, 0, offset, len(data), link, info, align, entsize
        )
        offset += len(data)
    pad = -offset % 8
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, offset + pad, 0, 64, 0, 0, 64, 6, 5)
    path.write_bytes(ehdr + body + bytes(pad) + table)
    return path


def test_more_symbols_than_characters(tmp_path: Path) -> None:
    """A symbol index past U+10FFFF (a table of over 1114112 symbols): checked, moved and
    renumbered like any other."""
    target = 0x110000
    src = tiny_elf(tmp_path / "big.o", target + 1, target, target)
    table = SymbolTable.parse("ffffffff81000000 T target\n", "map")
    report = convert_module(src, tmp_path / "out.o", symtab=table, exports=set())
    assert [(c.name, c.relocations) for c in report.converted] == [("target", 1)]
    with open(tmp_path / "out.o", "rb") as handle:
        elf = ELFFile(handle)
        kept, moved = (
            [(r["r_offset"], r["r_info_sym"], r["r_info_type"]) for r in s.iter_relocations()]
            for s in elf.iter_sections()
            if isinstance(s, RelocationSection)
        )
        assert kept == [(8, 0, 1)] and moved == [(0, target, 1)]
    [reloc] = inspect_module(tmp_path / "out.o")
    assert (reloc.section, reloc.symbol, reloc.livepatch_symbol) == (
        ".klp.rela.vmlinux..text",
        ".klp.sym.vmlinux.target,0",
        True,
    )


def test_symbol_index_past_characters_and_table(tmp_path: Path) -> None:
    src = tiny_elf(tmp_path / "bad.o", 4, 3, 0x110000)
    with pytest.raises(NotElfError, match=r"\.rela\.text refers to a symbol past the table$"):
        convert_module(src, tmp_path / "out.o", symtab=SymbolTable("s"), exports=set())


@pytest.mark.parametrize("swap", [False, True])
def test_fields_in_host_order(monkeypatch: pytest.MonkeyPatch, swap: bool) -> None:
    """field() and store() read and write the file's order whatever the host's. Forced to
    swap on this little-endian host, they see big-endian data as a big-endian host sees
    little-endian files: the same code runs."""
    monkeypatch.setattr("harness.klp.tables._SWAP", swap)
    order = ">" if swap else "<"  # the data's order, opposite the host's when swapping
    raw = memoryview(bytearray(struct.pack(f"{order}6I", 1, 2, 3, 0x10000, 5, 6)))
    assert list(field(raw, "I", 1, 3)) == [2, 5]
    store(raw, "I", 0, 3, array("I", [7, 0x12345678]))
    assert struct.unpack(f"{order}6I", raw) == (7, 2, 3, 0x12345678, 5, 6)
