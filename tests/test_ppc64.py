"""The converter and the offline verdict on real ppc64le modules (tests/data/ppc64le/, from
Debian's ppc64el 6.1 kernel; see the README there).

Every undefined symbol (but the module's own TOC base `.TOC.` and `_mcount`, which the loader
recognises by name) is treated as unexported and given a made-up vmlinux address, so every
relocation against one moves into `.klp.rela.vmlinux.<section>`, including the `.toc` entries
that hold the addresses of extern data (modules are built -mcmodel=large); pyelftools and
binutils' readelf (which reads PPC64 relocations on any host) check what was written.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from machine_modules import Entry, cli_refusal, readelf, retyped
from machine_modules import convert as convert_at
from machine_modules import entries as entries_of
from machine_modules import symbol_map as symbol_map_at

from harness.errors import RelocationTypeError
from harness.klp.annotations import read_annotations
from harness.klp.convert import convert_module, undefined_symbols
from harness.klp.elfread import ElfImage
from harness.klp.guard import GUARD_SYMBOL
from harness.klp.inspect import format_table, inspect_module, verdicts
from harness.klp.machines import AARCH64, PPC64, X86_64, machine_of
from harness.klp.sourcefile import read_file_annotations
from harness.klp.symbols import SymbolTable

DATA = Path(__file__).parent / "data" / "ppc64le"
SAMPLES = sorted(p.name for p in DATA.glob("*.ko"))
SHN_LIVEPATCH = 0xFF20
BASE = 0xC000000000010000  # where the made-up vmlinux table starts
REL24, ADDR64, REL24_NOTOC = 10, 38, 116
NOP, BL_MASK, BL = 0x60000000, 0xFC000003, 0x48000001


def symbol_map(ko: Path, skip: str = "") -> SymbolTable:
    return symbol_map_at(ko, BASE, skip)


def convert(src: Path, dst: Path) -> None:
    convert_at(src, dst, BASE)


def entries(path: Path) -> tuple[Counter[Entry], Counter[Entry], dict[str, int]]:
    return entries_of(path, "EM_PPC64")


def _kept(counter: Counter[Entry]) -> Counter[Entry]:
    """The entries against names the converter leaves alone on PPC64."""
    return Counter({e: n for e, n in counter.items() if PPC64.ignores(e[4])})


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_entry_moves_once_and_intact(sample: str, tmp_path: Path) -> None:
    src, dst = DATA / sample, tmp_path / sample
    convert(src, dst)
    before, _, _ = entries(src)
    after, moved, shndx = entries(dst)
    kept = _kept(before)
    assert {e[4] for e in kept} == {".TOC.", "_mcount"}  # every function has both
    assert after == kept  # the rest left its section
    assert moved == before - kept  # offset, type and addend kept, each entry once
    assert shndx and set(shndx.values()) == {SHN_LIVEPATCH}
    types = {PPC64.reloc_name(e[2]) for e in moved}
    assert "R_PPC64_REL24" in types and types <= PPC64.accepted_names


def _section(path: Path, name: str) -> bytes:
    with path.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        assert sec is not None, name
        return bytes(sec.data())


@pytest.mark.parametrize("sample", SAMPLES)
def test_calls_keep_the_nop_the_loader_turns_into_the_toc_restore(
    sample: str, tmp_path: Path
) -> None:
    """restore_r2() wants a nop after each moved `bl` (it writes `ld r2,24(r1)` there) and
    .stubs must stay for the stub each call to a klp symbol goes through."""
    src, dst = DATA / sample, tmp_path / sample
    convert(src, dst)
    _, moved, _ = entries(dst)
    calls = [e for e in moved if e[2] == REL24]
    assert calls
    for target in {e[0] for e in calls}:
        code = _section(dst, target)
        assert code == _section(src, target)  # code bytes are not touched
        for e in (e for e in calls if e[0] == target):
            (insn, after) = struct.unpack_from("<II", code, e[1])
            assert insn & BL_MASK == BL and after == NOP, (e, hex(insn), hex(after))
    with dst.open("rb") as f:
        stubs = ELFFile(f).get_section_by_name(".stubs")
        assert stubs is not None and stubs["sh_type"] == "SHT_NOBITS"


@pytest.mark.parametrize(
    ("sample", "data"),
    [("pcmcia_rsrc.ko", {"kmalloc_caches"}), ("hwpoison-inject.ko", {"mem_section", "vmemmap"})],
)
def test_toc_entries_of_extern_data_move(sample: str, data: set[str], tmp_path: Path) -> None:
    src, dst = DATA / sample, tmp_path / "out.ko"
    convert(src, dst)
    _, moved, _ = entries(dst)
    toc = {e[4] for e in moved if e[0] == ".toc" and e[2] == ADDR64}
    assert data <= toc
    assert _section(dst, ".toc") == _section(src, ".toc")
    assert "Relocation section '.klp.rela.vmlinux..toc'" in readelf(dst)


@pytest.mark.parametrize("sample", SAMPLES)
def test_readelf_reads_the_klp_relocations(sample: str, tmp_path: Path) -> None:
    dst = tmp_path / sample
    convert(DATA / sample, dst)
    out = readelf(dst)
    assert "Relocation section '.klp.rela.vmlinux..text" in out
    klp_lines = [line for line in out.splitlines() if ".klp.sym.vmlinux." in line]
    assert any("R_PPC64_REL24" in line for line in klp_lines)
    assert any("R_PPC64_ADDR64" in line or "R_PPC64_REL64" in line for line in klp_lines)
    assert "unrecognized" not in out.lower()


def test_a_type_the_ppc64_loader_refuses_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "notoc.ko"
    offset = retyped(DATA / "pcmcia_rsrc.ko", src, REL24, REL24_NOTOC, PPC64.ignores)
    with pytest.raises(RelocationTypeError) as err:
        convert(src, tmp_path / "out.ko")
    message = str(err.value)
    assert f"+{offset:#x}: R_PPC64_REL24_NOTOC against 'kmalloc_trace'" in message
    assert message.endswith("is refused by the PPC64 module loader")
    assert "\n" not in message and not (tmp_path / "out.ko").exists()


def test_cli_refusal_is_one_line_with_the_exit_status(tmp_path: Path) -> None:
    src = tmp_path / "notoc.ko"
    retyped(DATA / "tcp_scalable.ko", src, REL24, REL24_NOTOC, PPC64.ignores)
    assert "PPC64 module loader" in cli_refusal(src, tmp_path, 0xC000000000000000)


def test_toc_base_and_mcount_are_never_converted(tmp_path: Path) -> None:
    src = DATA / "chipreg.ko"
    names = undefined_symbols(src)
    assert ".TOC." not in names and "_mcount" not in names and "shared_processor" in names
    # even when the symbol table has them (a real System.map lists _mcount)
    text = "c000000000001000 T _mcount\nc000000000002000 d .TOC.\n"
    text += "".join(f"c0000000001{i:05x} T {n}\n" for i, n in enumerate(names))
    dst = tmp_path / "out.ko"
    convert_module(src, dst, symtab=SymbolTable.parse(text, "map"), exports=set(), guard=False)
    after, _, _ = entries(dst)
    assert {e[4] for e in after} == {".TOC.", "_mcount"}


def test_guard_on_ppc64(tmp_path: Path) -> None:
    src, dst = DATA / "tcp_scalable.ko", tmp_path / "out.ko"
    convert_module(
        src, dst, symtab=symbol_map(src), exports=set(), versions={GUARD_SYMBOL: 0x1234ABCD}
    )
    assert GUARD_SYMBOL in undefined_symbols(dst)
    readelf(dst)


def test_inspect_verdicts(tmp_path: Path) -> None:
    src, dst = DATA / "hwpoison-inject.ko", tmp_path / "out.ko"
    convert(src, dst)
    relocs = inspect_module(dst)
    assert {r.type for r in relocs} == {"R_PPC64_REL24", "R_PPC64_ADDR64"}
    judged = verdicts(relocs, symbol_map(src))
    assert judged and {v.status for v in judged} == {"resolves"}
    gone = relocs[0].name
    judged = verdicts(relocs, symbol_map(src, skip=gone))
    assert {v.name for v in judged if v.status == "not-found"} == {gone}
    rows = format_table(relocs, None).splitlines()
    col = rows[0].index("section")
    assert all(row[col - 1] == " " and row[col] == "." for row in rows[1:])
    first = relocs[0]
    data = dict(first.__dict__, type="R_PPC64_PCREL34")
    (v,) = verdicts([type(first)(**data)], symbol_map(src))
    assert v.status == "bad-type" and v.message.endswith("refused by the PPC64 module loader")


def test_machine_tables() -> None:
    assert machine_of("R_PPC64_REL24") is PPC64 and machine_of("PPC64 type 7") is PPC64
    assert machine_of("R_AARCH64_CALL26") is AARCH64 and machine_of("R_X86_64_PC32") is X86_64
    for other in (X86_64, AARCH64):
        assert PPC64.accepted_names.isdisjoint(other.accepted_names)
    assert PPC64.loader[REL24] == 4 and PPC64.loader[ADDR64] == 8 and 0 not in PPC64.loader
    assert PPC64.ignores("_restgpr0_14") and not X86_64.ignores(".TOC.")


SOURCES = Path("/root/.cache/klp-harness/sources")


def _module_64(version: str) -> str:
    found = sorted(SOURCES.glob(f"linux-source-{version}_*/linux-source-{version}"))
    if not found:
        pytest.skip(f"linux-source-{version} is not unpacked in the harness cache")
    return (found[-1] / "arch/powerpc/kernel/module_64.c").read_text()


def _without_pcrel(text: str) -> str:
    """`text` as the preprocessor passes it with CONFIG_PPC_KERNEL_PCREL unset (the blocks
    of module_64.c are not nested inside one another)."""
    out: list[str] = []
    stack: list[bool] = []  # whether each open #if's current branch is kept
    for line in text.splitlines():
        word = line.strip().split(" ", 1)
        if word[0] in ("#ifdef", "#ifndef", "#if"):
            pcrel = "CONFIG_PPC_KERNEL_PCREL" in line
            stack.append(not pcrel if word[0] != "#ifndef" else True)
        elif word[0] == "#else" and stack:
            stack[-1] = not stack[-1]
        elif word[0] == "#endif" and stack:
            stack.pop()
        elif all(stack):
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_loader_table_matches_the_kernel_source(version: str) -> None:
    """Every case label of powerpc's apply_relocate_add() of a non-PCREL kernel is in the
    table, and nothing else (checked when the harness has unpacked that linux-source)."""
    text = _module_64(version)
    body = text[text.index("int apply_relocate_add(") :]
    body = _without_pcrel(body[: body.index("default:")])
    labels = {n.replace("R_PPC_", "R_PPC64_") for n in re.findall(r"case (R_PPC\w+):", body)}
    assert labels == {PPC64.reloc_name(t) for t in PPC64.loader}


def test_loader_gives_klp_calls_a_stub_and_counts_them() -> None:
    """The source facts the converter relies on (7.3): REL24 against a SHN_LIVEPATCH symbol
    takes the stub path with the TOC restore, and get_stubs_size() counts the REL24 entries
    of every SHT_RELA section (a .klp.rela.* section is one)."""
    text = _module_64("7.3")
    rel24 = text[text.index("case R_PPC_REL24:") :]
    assert re.search(r"SHN_UNDEF \|\|\s+sym->st_shndx == SHN_LIVEPATCH\)", rel24[:400])
    assert "stub_for_addr(" in rel24[:700] and "restore_r2(" in rel24[:900]
    sizes = text[text.index("static unsigned long get_stubs_size(") :]
    sizes = sizes[: sizes.index("stubs for ftrace_caller")]
    assert "sh_type == SHT_RELA" in sizes and "R_PPC_REL24" in sizes
    assert "SHF_RELA_LIVEPATCH" not in sizes  # klp sections are not skipped


ANNOTATED_C = r"""
#include "klp_convert.h"
extern void init_once(void *foo);
extern int active_show(int);
KLP_MODULE_RELOC(vmlinux) my_relocs[] = { KLP_SYMPOS(active_show, 2) };
KLP_MODULE_RELOC_FILE(vmlinux) my_files[] = { KLP_SYMPOS_FILE(init_once, "fs/proc/inode.c") };
void *kept = (void *)init_once;
int use(int x) { return active_show(x); }
"""
CROSS_GCC = shutil.which("powerpc64le-linux-gnu-gcc")


@pytest.mark.skipif(CROSS_GCC is None, reason="needs gcc-powerpc64le-linux-gnu")
def test_annotations_are_read_from_ppc64_pointers(tmp_path: Path) -> None:
    """Both annotation arrays hold R_PPC64_ADDR64 pointers on ppc64le (not R_X86_64_64)."""
    src, obj = tmp_path / "a.c", tmp_path / "a.o"
    src.write_text(ANNOTATED_C)
    include = Path(__file__).parents[1] / "harness" / "include"
    cmd = [str(CROSS_GCC), "-O2", "-mcmodel=large", "-ffreestanding", "-nostdinc", f"-I{include}"]
    subprocess.run([*cmd, "-c", str(src), "-o", str(obj)], check=True)
    img = ElfImage.load(obj)
    syms, strtab = img.symbols(), img.strtab()
    notes, _ = read_annotations(img, syms, strtab)
    files, _ = read_file_annotations(img, syms, strtab)
    assert [n.sympos for n in notes.values()] == [2]
    assert [f.file for f in files.values()] == ["fs/proc/inode.c"]
