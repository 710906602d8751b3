"""A small ELF64 relocatable-object writer: lays out sections and writes atomically
(compressed when the output name ends in .xz, .zst or .gz).

The caller gives the original ELF header and every output section (header fields
and content); offsets, the section header table and e_shoff/e_shnum/e_shstrndx are
recomputed here. Content is written from memoryviews, so untouched sections are
never copied in memory.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import UnsupportedElfError
from harness.klp.compressed import write_module
from harness.klp.elfread import EHDR_SIZE, SHDR_SIZE, SHN_LORESERVE, SHT_NOBITS

_SHDR = struct.Struct("<IIQQQQIIQQ")


@dataclass(frozen=True)
class OutSection:
    name: int  # offset in the output section name table
    type: int
    flags: int
    addr: int
    link: int
    info: int
    addralign: int
    entsize: int
    data: bytes | bytearray | memoryview  # ignored (but its length kept) for SHT_NOBITS
    size: int | None = None  # only for SHT_NOBITS, whose data is empty

    def with_data(self, data: bytes | bytearray | memoryview) -> OutSection:
        return replace(self, data=data)


def _align(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


def layout(
    ehdr: bytes, sections: Sequence[OutSection], shstrndx: int
) -> list[bytes | bytearray | memoryview]:
    """The output as a list of chunks (header, padding, contents, section headers)."""
    count = len(sections) + 1  # plus the null section
    if count >= SHN_LORESERVE:
        raise UnsupportedElfError(f"{count} sections need extended numbering (not supported)")
    chunks: list[bytes | bytearray | memoryview] = []
    headers = bytearray(SHDR_SIZE)  # the null section header
    pos = EHDR_SIZE
    for sec in sections:
        size = len(sec.data)
        offset = _align(pos, sec.addralign)
        if sec.type == SHT_NOBITS:
            size = sec.size or 0
        else:
            if offset > pos:
                chunks.append(bytes(offset - pos))
            if size:
                chunks.append(sec.data)
            pos = offset + size
        headers += _SHDR.pack(
            sec.name,
            sec.type,
            sec.flags,
            sec.addr,
            offset,
            size,
            sec.link,
            sec.info,
            sec.addralign,
            sec.entsize,
        )
    shoff = _align(pos, 8)
    if shoff > pos:
        chunks.append(bytes(shoff - pos))
    chunks.append(headers)
    head = bytearray(ehdr[:EHDR_SIZE])
    struct.pack_into("<Q", head, 0x20, 0)  # e_phoff: ET_REL has no program headers
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<H", head, 0x34, EHDR_SIZE)  # e_ehsize
    struct.pack_into("<H", head, 0x38, 0)  # e_phnum
    struct.pack_into("<H", head, 0x3A, SHDR_SIZE)  # e_shentsize
    struct.pack_into("<H", head, 0x3C, count)  # e_shnum
    struct.pack_into("<H", head, 0x3E, shstrndx)  # e_shstrndx
    return [head, *chunks]


def write_elf(
    path: Path, ehdr: bytes, sections: Sequence[OutSection], shstrndx: int, mode: int = 0o644
) -> None:
    """Write the module atomically; compressed when the name asks for it (`x.ko.xz`)."""
    write_module(path, layout(ehdr, sections, shstrndx), mode)
