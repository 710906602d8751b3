"""In-source sympos annotations, compatible with the klp-convert patch series.

`KLP_MODULE_RELOC(obj) name[] = { KLP_SYMPOS(sym, pos), ... };` puts packed
`{void *sym; u32 sympos}` entries in a section `.klp.module_relocs.<obj>`; the
pointer's 64-bit absolute relocation names the symbol. The sections (and their
relocation sections) are consumed: the converter removes them from its output.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from harness.errors import AmbiguousSymbolError, AnnotationUseError, UnsupportedElfError
from harness.klp.abi import ANNOTATION_ENTRY, ANNOTATION_PREFIX
from harness.klp.elfread import (
    R_X86_64_64,
    SHF_ALLOC,
    SHT_NOBITS,
    SHT_RELA,
    ElfImage,
    Section,
    cstring,
)
from harness.klp.files import printable
from harness.klp.tables import Symbols

# The relocation of the entry's 64-bit pointer, per e_machine: R_X86_64_64, R_AARCH64_ABS64,
# R_PPC64_ADDR64.
POINTER_RELOC = {62: R_X86_64_64, 183: 257, 21: 38}


@dataclass(frozen=True)
class Annotation:
    obj: str
    sympos: int
    section: str


@dataclass(frozen=True)
class PointerSection:
    """An annotation section: its object name (after the prefix), bytes and pointers."""

    section: Section
    obj: str
    data: bytes
    pointers: list[tuple[int, int, int]]  # (offset, symbol index, addend)


def pointer_sections(
    img: ElfImage, prefix: str, dropped: set[int], *, align: int, width: int, what: str
) -> Iterator[PointerSection]:
    """Every section named `prefix<obj>` with the pointers its RELA sections write (each
    the machine's 64-bit absolute type, at a multiple of `align`, `width` bytes inside
    it; else `what` names the entry it is not). The sections and their RELA sections are
    added to `dropped`: the converter consumes them."""
    pointer = POINTER_RELOC.get(img.machine.em, R_X86_64_64)
    for sec in img.sections:
        if not sec.name.startswith(prefix):
            continue
        dropped.add(sec.index)
        data = img.section_bytes(sec.index) if sec.type != SHT_NOBITS else b""
        pointers = []
        for rel in img.sections:
            if rel.type != SHT_RELA or rel.info != sec.index:
                continue
            dropped.add(rel.index)
            arr = img.relas(rel.index)
            fields = zip(arr.offsets(), arr.types(), arr.symbols(), arr.addends(), strict=True)
            for off, rtype, index, addend in fields:
                if off % align or off + width > len(data) or rtype != pointer:
                    raise UnsupportedElfError(f"{img.label}: {sec.label}+{off:#x}: not a {what}")
                pointers.append((off, index, addend))
        yield PointerSection(sec, sec.name[len(prefix) :], data, pointers)


def read_annotations(
    img: ElfImage, syms: Symbols, strtab: bytes
) -> tuple[dict[int, Annotation], set[int]]:
    """({symbol index: annotation}, indexes of the sections to drop)."""
    found: dict[int, Annotation] = {}
    dropped: set[int] = set()
    what = "KLP_SYMPOS entry (packed {pointer, u32 sympos})"
    each = pointer_sections(
        img, ANNOTATION_PREFIX, dropped, align=ANNOTATION_ENTRY, width=ANNOTATION_ENTRY, what=what
    )
    for sec in each:
        obj = sec.obj
        for off, index, _ in sec.pointers:
            (pos,) = struct.unpack_from("<I", sec.data, off + 8)
            name = cstring(strtab, syms.names[index])
            old = found.get(index)
            if old and (old.obj, old.sympos) != (obj, pos):
                raise AmbiguousSymbolError(
                    f"{img.label}: '{printable(name)}' is annotated twice: "
                    f"{printable(old.obj)} position {old.sympos} and {printable(obj)} "
                    f"position {pos}"
                )
            found[index] = Annotation(obj, pos, sec.section.name)
    return found, dropped


def stale_references(
    img: ElfImage, syms: Symbols, strtab: bytes, dropped: set[int]
) -> dict[int, set[int]]:
    """{relocation section: symbols of dropped annotation sections it refers to}, for the
    sections that must lose those entries: only non-loaded ones (debug info of the array,
    which kbuild's -g emits); the kernel applies relocations of SHF_ALLOC sections only.
    A loaded section that uses an annotation array is refused (AnnotationUseError)."""
    used = {i for i, shndx in enumerate(syms.shndx) if i and shndx in dropped}
    stale: dict[int, set[int]] = {}
    if not used:
        return stale
    for rel in img.sections:
        if rel.type != SHT_RELA or rel.index in dropped or rel.link != img.symtab_index:
            continue
        refs = img.relas(rel.index).distinct_symbols() & used
        if not refs:
            continue
        target = img.sections[rel.info] if 0 < rel.info < len(img.sections) else None
        if target is not None and target.flags & SHF_ALLOC:
            name = cstring(strtab, syms.names[min(refs)])
            raise AnnotationUseError(
                f"{img.label}: {rel.label} (loaded with the module) refers to "
                f"'{printable(name)}' of an annotation section; KLP_MODULE_RELOC arrays are "
                "consumed by the converter and must not be used by the module's code or data"
            )
        stale[rel.index] = refs
    return stale
