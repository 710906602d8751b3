"""The symbol and relocation tables of an ELF64 little-endian object, over its raw bytes.

Standard library only: each field is decoded in bulk, at C speed, from a strided memoryview
cast into an array (no per-entry Python objects), and only when first needed. Relocation
entries are moved as byte slices, never re-packed.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array
from collections.abc import Iterable
from typing import Literal

SYM_SIZE, RELA_SIZE = 24, 24  # sizeof(Elf64_Sym), sizeof(Elf64_Rela)

_SWAP = sys.byteorder != "little"  # the file is little-endian; arrays are in host order
MAX_CHAR = sys.maxunicode  # symbol_text() holds indexes up to this
IntCode = Literal["H", "I", "Q", "q"]  # the array/memoryview codes of ELF64's integer fields


def field(raw: memoryview, code: IntCode, start: int, step: int) -> array[int]:
    """Items `start`, `start + step`, ... of `raw` read as little-endian `code` ('H', 'I',
    'Q' or 'q') items: one strided copy in C. `raw` is a byte view whose length is a
    multiple of the item size."""
    out = array(code, raw.cast(code)[start::step].tobytes())
    if _SWAP:
        out.byteswap()
    return out


def store(raw: memoryview, code: IntCode, start: int, step: int, values: array[int]) -> None:
    """The inverse of field(): write `values` into every `step`-th item of `raw`."""
    if _SWAP:
        values = array(code, values)
        values.byteswap()
    raw.cast(code)[start::step] = values


class Relas:
    """One SHT_RELA section: 24-byte entries (r_offset, r_info, r_addend) over the raw bytes,
    each field decoded on first use. ELF64_R_SYM is the high half of r_info, ELF64_R_TYPE
    the low half: as 32-bit words, entry i is words 6i..6i+5 = offset lo/hi, type, symbol,
    addend lo/hi."""

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        self.raw = memoryview(raw).cast("B")
        self._symbols: array[int] | None = None
        self._text: str | None = None
        self._no_text = False

    def __len__(self) -> int:
        return len(self.raw) // RELA_SIZE

    def symbols(self) -> array[int]:
        """ELF64_R_SYM of each entry."""
        if self._symbols is None:
            self._symbols = field(self.raw, "I", 3, 6)
        return self._symbols

    def distinct_symbols(self) -> set[int]:
        """The symbol indexes the section uses (a set built in entry order)."""
        return set(self.symbols())

    def symbol_text(self) -> str | None:
        """ELF64_R_SYM of each entry as one character, chr(index): `re` then finds the
        entries of given symbols (a character class), and their runs, in C. None when an
        index is past U+10FFFF (valid only in a table of over 1114112 symbols)."""
        if self._text is None and not self._no_text:
            words = self.raw.cast("I")[3::6].tobytes()
            try:
                self._text = words.decode("utf-32-le", "surrogatepass")
            except UnicodeDecodeError:
                self._no_text = True
        return self._text

    def types(self) -> array[int]:
        """ELF64_R_TYPE of each entry."""
        return field(self.raw, "I", 2, 6)

    def offsets(self) -> array[int]:
        return field(self.raw, "Q", 0, 3)

    def addends(self) -> array[int]:
        return field(self.raw, "q", 2, 3)

    def entries(self, start: int, stop: int) -> memoryview:
        """The raw bytes of entries start..stop-1."""
        return self.raw[start * RELA_SIZE : stop * RELA_SIZE]


def symbol_class(indexes: Iterable[int]) -> re.Pattern[str] | None:
    """A pattern for runs of entries whose symbol is one of `indexes`, over symbol_text();
    None when an index has no character (past U+10FFFF)."""
    chars = sorted(indexes)
    if not chars:
        return re.compile("(?!)")  # matches nothing
    if chars[-1] > MAX_CHAR:
        return None
    return re.compile("[" + "".join(re.escape(chr(c)) for c in chars) + "]+")


class Symbols:
    """A writable copy of the symbol table (24-byte Elf64_Sym entries). The fields the
    converter reads are decoded once; set_name/set_shndx keep them and the bytes in step."""

    def __init__(self, raw: bytearray) -> None:
        self.raw = raw
        view = memoryview(raw)
        self.names = field(view, "I", 0, 6)  # st_name
        self.info = bytes(raw[4::SYM_SIZE])  # st_info: binding << 4 | type
        self.shndx = field(view, "H", 3, 12)  # st_shndx

    def __len__(self) -> int:
        return len(self.names)

    def values(self) -> array[int]:
        """st_value of each symbol."""
        return field(memoryview(self.raw), "Q", 1, 3)

    def set_name(self, index: int, offset: int) -> None:
        self.names[index] = offset
        struct.pack_into("<I", self.raw, index * SYM_SIZE, offset)

    def set_shndx(self, index: int, shndx: int) -> None:
        self.shndx[index] = shndx
        struct.pack_into("<H", self.raw, index * SYM_SIZE + 6, shndx)
