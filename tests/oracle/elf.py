"""A small ELF64 little-endian relocatable reader of its own (no harness code, no pyelftools):
the oracle must not share a parser with the converter it checks."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SHT_SYMTAB = 2
SHT_RELA = 4
SHT_NOBITS = 8
SHF_ALLOC = 0x2
SHF_RELA_LIVEPATCH = 0x00100000
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_LIVEPATCH = 0xFF20
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
STB_WEAK = 2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


class ElfFormatError(Exception):
    """The file is not an ELF64 LE relocatable object this reader understands."""


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    shndx: int
    bind: int


class Elf:
    def __init__(self, data: bytes, label: str = "<elf>"):
        self.data, self.label = data, label
        if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ElfFormatError(f"{label}: not an ELF64 little-endian file")
        hdr = _EHDR.unpack_from(data)
        shoff, shentsize, shnum, shstrndx = hdr[6], hdr[11], hdr[12], hdr[13]
        if hdr[1] != 1 or shentsize != _SHDR.size:
            raise ElfFormatError(f"{label}: not a relocatable object (e_type {hdr[1]})")
        if shoff + shnum * shentsize > len(data):
            raise ElfFormatError(f"{label}: section headers beyond the end of the file")
        raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
        names = self._bytes(raw[shstrndx][4], raw[shstrndx][5]) if shstrndx < shnum else b""
        self.sections = [
            Section(i, _cstr(names, r[0]), r[1], r[2], r[4], r[5], r[6], r[7], r[8])
            for i, r in enumerate(raw)
        ]
        tabs = [s for s in self.sections if s.type == SHT_SYMTAB]
        if len(tabs) != 1:
            raise ElfFormatError(f"{label}: {len(tabs)} symbol tables (want 1)")
        self.symtab_index = tabs[0].index
        strtab = self.sections[tabs[0].link]
        self.strtab = self._bytes(strtab.offset, strtab.size)
        self.symbols = [
            Symbol(_cstr(self.strtab, n), value, shndx, info >> 4)
            for n, info, _other, shndx, value, _size in _SYM.iter_unpack(
                self._bytes(tabs[0].offset, tabs[0].size - tabs[0].size % _SYM.size)
            )
        ]

    def _bytes(self, offset: int, size: int) -> bytes:
        if offset + size > len(self.data):
            raise ElfFormatError(f"{self.label}: section data beyond the end of the file")
        return self.data[offset : offset + size]

    def contents(self, sec: Section) -> bytes:
        return b"" if sec.type == SHT_NOBITS else self._bytes(sec.offset, sec.size)

    def relocations(self, sec: Section) -> Iterator[tuple[int, int, int]]:
        """(offset, info, addend) of a SHT_RELA section, unpacked as they are read."""
        end = sec.offset + sec.size - sec.size % _RELA.size
        if end > len(self.data):
            raise ElfFormatError(f"{self.label}: section data beyond the end of the file")
        return _RELA.iter_unpack(memoryview(self.data)[sec.offset : end])

    def relocation_count(self, sec: Section) -> int:
        return sec.size // _RELA.size

    def section_keys(self) -> list[tuple[str, int]]:
        """Section identities that survive renumbering: (name, n-th section of that name)."""
        seen: dict[str, int] = {}
        out = []
        for sec in self.sections:
            seen[sec.name] = seen.get(sec.name, 0) + 1
            out.append((sec.name, seen[sec.name]))
        return out


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "surrogateescape")
