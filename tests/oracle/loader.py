"""Simulate the x86-64 module loader (kernel/module/main.c simplify_symbols() and
apply_relocations(), arch/x86/kernel/module.c apply_relocate_add(), kernel/livepatch/core.c
klp_resolve_symbols()) on section images, to compare an original module with its conversion."""

from __future__ import annotations

import random
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from oracle.elf import (
    SHF_RELA_LIVEPATCH,
    SHN_ABS,
    SHN_COMMON,
    SHN_LIVEPATCH,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_RELA,
    STB_WEAK,
    Elf,
)

MASK64 = (1 << 64) - 1
MODULE_AREA = 0xFFFFFFFFC0000000  # MODULES_VADDR on x86-64 without KASLR
OTHER_MODULES = 0xFFFFFFFFE0000000  # where symbols exported by other modules are placed
NONALLOC_AREA = 0xFFFFC90000000000  # sections the loader does not keep (their temp copy)
R_NONE, R_64, R_PC32, R_PLT32, R_32, R_32S, R_PC64 = 0, 1, 2, 4, 10, 11, 24
SIZES = {R_64: 8, R_PC32: 4, R_PLT32: 4, R_32: 4, R_32S: 4, R_PC64: 8}
TYPE_NAMES = {0: "NONE", 1: "64", 2: "PC32", 4: "PLT32", 10: "32", 11: "32S", 24: "PC64"}
# sscanf(".klp.sym.%55[^.].%511[^,],%lu") and ".klp.rela.%55[^.]"
KLP_SYM = re.compile(r"\.klp\.sym\.([^.]{1,55})\.([^,]{1,511}),([0-9]+)")
KLP_RELA = re.compile(r"\.klp\.rela\.([^.]{1,55})\.")


class LoadError(Exception):
    """The kernel would refuse the module: the message is the reason, as the kernel says it."""


class KernelTable:
    """/proc/kallsyms text (vmlinux lines only), each name's addresses in table order."""

    def __init__(self, text: str):
        self.entries: dict[str, list[tuple[int, str]]] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:  # a 4th column is a module's [name]
                self.entries.setdefault(parts[2], []).append((int(parts[0], 16), parts[1]))

    def exported(self, name: str) -> int | None:
        """The address an export of `name` has: the one global entry (or the only entry)."""
        cands = self.entries.get(name, [])
        globals_ = [addr for addr, kind in cands if kind.isupper()]
        if len(globals_) == 1:
            return globals_[0]
        return cands[0][0] if len(cands) == 1 else None

    def exported_position(self, name: str) -> int | None:
        """1-based position of the global entry among several, None when unique or unknown."""
        cands = self.entries.get(name, [])
        where = [i for i, (_, kind) in enumerate(cands, 1) if kind.isupper()]
        return where[0] if len(cands) > 1 and len(where) == 1 else None

    def klp_lookup(self, name: str, sympos: int) -> int:
        """klp_find_object_symbol(): sympos 0 must be unique, n is the n-th; address 0 fails."""
        cands = self.entries.get(name, [])
        if sympos == 0 and len(cands) > 1:
            raise LoadError(f"unresolvable ambiguity for symbol '{name}' in object '(null)'")
        if sympos > len(cands) or not cands:
            raise LoadError(f"symbol position {sympos} for symbol '{name}' not found")
        addr = cands[(sympos or 1) - 1][0]
        if addr == 0:
            raise LoadError(f"symbol '{name}' not found in symbol table")
        return addr


@dataclass
class Field:
    """One relocation as the simulation applied it (for explaining a difference)."""

    section: str
    offset: int
    rtype: int
    symbol: str
    klp: bool


@dataclass
class Loaded:
    images: dict[tuple[str, int], bytearray]
    fields: dict[tuple[tuple[str, int], int], Field] = field(default_factory=dict)
    klp_relocations: int = 0
    ordinary_relocations: int = 0
    skipped_objects: dict[str, int] = field(default_factory=dict)  # .klp.rela.<module> sections


def section_bases(elf: Elf, seed: int) -> dict[tuple[str, int], int]:
    """Arbitrary bases: ALLOC sections shuffled into the module area with random page gaps."""
    rng = random.Random(seed)
    keys = elf.section_keys()
    alloc = [(k, s) for k, s in zip(keys, elf.sections, strict=True) if s.alloc]
    rng.shuffle(alloc)
    bases: dict[tuple[str, int], int] = {}
    cursor = MODULE_AREA + rng.randrange(0, 64) * 0x1000
    for key, sec in alloc:
        align = max(sec.align, 1)
        cursor = (cursor + align - 1) // align * align
        bases[key] = cursor
        cursor += sec.size + rng.randrange(0, 4) * 0x1000
    other = NONALLOC_AREA
    for key, sec in zip(keys, elf.sections, strict=True):
        if not sec.alloc:
            bases[key] = other
            other += (sec.size + 0xFFF) // 0x1000 * 0x1000 + 0x1000
    return bases


def other_module_address(name: str) -> int:
    return OTHER_MODULES + (zlib.crc32(name.encode("utf-8", "surrogateescape")) & 0xFFFFFF) * 16


def load(
    elf: Elf,
    bases: dict[tuple[str, int], int],
    table: KernelTable,
    module_exports: frozenset[str],
    record: bool = False,
) -> Loaded:
    """Lay the module out at `bases` and apply every relocation the loader applies."""
    keys = elf.section_keys()
    out = Loaded({k: bytearray(elf.contents(s)) for k, s in zip(keys, elf.sections, strict=True)})
    values = list(_symbol_values(elf, keys, bases, table, module_exports))
    for sec in elf.sections:
        if sec.type != SHT_RELA or sec.info >= len(elf.sections):
            continue
        target = elf.sections[sec.info]
        if not target.alloc:
            continue  # "Don't bother with non-allocated sections"
        klp = bool(sec.flags & SHF_RELA_LIVEPATCH)
        if klp:
            m = KLP_RELA.match(sec.name)
            if not m:
                raise LoadError(f"section {sec.name}: not a .klp.rela.<object>. name")
            if m.group(1) != "vmlinux":
                out.skipped_objects[m.group(1)] = out.skipped_objects.get(m.group(1), 0) + 1
                continue  # applied only by a livepatch when that module loads
        if klp:
            _klp_resolve(elf, elf.relocations(sec), values, table)
            out.klp_relocations += elf.relocation_count(sec)
        else:
            out.ordinary_relocations += elf.relocation_count(sec)
        key = keys[target.index]
        if target.type == SHT_NOBITS:
            raise LoadError(f"relocations in {sec.name} target a NOBITS section")
        _apply(out, key, bases[key], elf.relocations(sec), values, elf, klp, record)
    return out


def _symbol_values(
    elf: Elf,
    keys: list[tuple[str, int]],
    bases: dict[tuple[str, int], int],
    table: KernelTable,
    module_exports: frozenset[str],
) -> Iterator[int]:
    """simplify_symbols(): undefined symbols from the exports, defined ones at base+value."""
    for i, sym in enumerate(elf.symbols):
        if i == 0 or sym.shndx == SHN_LIVEPATCH:
            yield sym.value  # livepatch symbols: klp_resolve_symbols() sets them later
        elif sym.shndx == SHN_UNDEF:
            if not sym.name:
                yield 0
                continue
            # another module's export wins: the converter leaves those alone
            if sym.name in module_exports:
                addr: int | None = other_module_address(sym.name)
            else:
                addr = table.exported(sym.name)
            if addr is None and sym.bind != STB_WEAK:
                raise LoadError(f"Unknown symbol {sym.name} (err -2)")
            yield addr or 0
        elif sym.shndx == SHN_ABS:
            yield sym.value
        elif sym.shndx == SHN_COMMON:
            raise LoadError(f"Please compile with -fno-common: {sym.name}")
        elif sym.shndx >= SHN_LORESERVE or sym.shndx >= len(keys):
            raise LoadError(f"symbol {sym.name}: section index {sym.shndx:#x}")
        else:
            yield (bases[keys[sym.shndx]] + sym.value) & MASK64


def _klp_resolve(
    elf: Elf, relas: Iterable[tuple[int, int, int]], values: list[int], table: KernelTable
) -> None:
    for _off, info, _add in relas:
        sym = elf.symbols[info >> 32]
        if sym.shndx != SHN_LIVEPATCH:
            raise LoadError(f"symbol {sym.name} is not marked as a livepatch symbol")
        m = KLP_SYM.fullmatch(sym.name)
        if not m:
            raise LoadError(f"symbol {sym.name} has an incorrectly formatted name")
        if m.group(1) != "vmlinux":
            raise LoadError(f"symbol {sym.name} object does not match its .klp.rela section")
        values[info >> 32] = table.klp_lookup(m.group(2), int(m.group(3)))


def _apply(
    out: Loaded,
    key: tuple[str, int],
    base: int,
    relas: Iterable[tuple[int, int, int]],
    values: list[int],
    elf: Elf,
    klp: bool,
    record: bool,
) -> None:
    """apply_relocate_add(): the value, the overflow checks, the all-zero target check."""
    image = out.images[key]
    pack = struct.pack_into
    for offset, info, addend in relas:
        rtype = info & 0xFFFFFFFF
        if rtype == R_NONE:
            continue
        size = SIZES.get(rtype)
        if size is None:
            raise LoadError(f"Unknown rela relocation: {rtype}")
        val = (values[info >> 32] + addend) & MASK64
        loc = base + offset
        if rtype == R_32 and val >> 32:
            raise LoadError(f"overflow in relocation type {rtype} val {val:x}")
        if rtype == R_32S and not (val < 1 << 31 or val >= MASK64 + 1 - (1 << 31)):
            raise LoadError(f"overflow in relocation type {rtype} val {val:x}")
        if rtype in (R_PC32, R_PLT32, R_PC64):
            val = (val - loc) & MASK64
        if offset + size > len(image):
            raise LoadError(f"relocation at {key[0]}+{offset:#x} beyond the section")
        if any(image[offset : offset + size]):
            raise LoadError(
                f"Invalid relocation target, existing value is nonzero for type {rtype}, "
                f"{key[0]}+{offset:#x}"
            )
        if size == 8:
            pack("<Q", image, offset, val)
        else:
            pack("<I", image, offset, val & 0xFFFFFFFF)
        if record:
            name = elf.symbols[info >> 32].name
            out.fields[key, offset] = Field(key[0], offset, rtype, name, klp)
