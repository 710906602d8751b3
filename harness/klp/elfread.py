"""Reading x86-64, AArch64 and ppc64le relocatable ELF files (a linked `<mod>.o` or a `.ko`).

Standard library only: the ELF header and section headers are unpacked with struct, the
symbol and relocation tables are read through harness.klp.tables (in bulk, at C speed, and
only when needed), after checking every offset the rest of the code relies on.
(No numpy or pyelftools here: importing either took longer than converting a large module.)
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import NoSymtabError, NotElfError, UnsupportedElfError
from harness.klp.compressed import MAGICS, read_module
from harness.klp.files import printable
from harness.klp.machines import MACHINES, SUPPORTED, X86_64, Machine
from harness.klp.tables import MAX_CHAR, RELA_SIZE, SYM_SIZE, Relas, Symbols

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_LIVEPATCH = 0xFF20

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_NOBITS, SHT_REL, SHT_GROUP, SHT_SYMTAB_SHNDX = 8, 9, 17, 18

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK = 0x1, 0x2, 0x4, 0x40
SHF_RELA_LIVEPATCH = 0x00100000

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_SECTION = 3

EHDR_SIZE, SHDR_SIZE = 64, 64
MAX_ALIGN = 1 << 20  # larger alignments only appear in corrupted files
MODULE_LIMIT = 1 << 30  # a debug build's .ko can pass 100 MiB; refuse what cannot be one

R_X86_64_NONE, R_X86_64_64 = 0, 1
RELOC_NAMES = X86_64.names


def reloc_name(rtype: int, machine: Machine = X86_64) -> str:
    return machine.reloc_name(rtype)


# e_ident[16], e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
# e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign,
# sh_entsize
_SHDR = struct.Struct("<IIQQQQIIQQ")
EM_X86_64, ET_REL = 62, 1
_MACHINES = {3: "EM_386", 8: "EM_MIPS", 21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM"}
_MACHINES |= {62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV", 258: "EM_LOONGARCH"}
_TYPES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}


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
    addralign: int
    entsize: int
    name_offset: int

    @property
    def label(self) -> str:
        """The name as messages show it (control characters escaped)."""
        return printable(self.name)


def cstring(table: bytes | bytearray, offset: int) -> str:
    """The NUL-terminated string at `offset`; latin-1 keeps every byte round-trippable."""
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("latin-1")


class ElfImage:
    """One validated ELF64 little-endian ET_REL file of a machine in harness.klp.machines,
    held in memory."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.label = printable(path)  # the path as messages show it
        self.data = data
        self.view = memoryview(data)
        self._relas: dict[int, Relas] = {}
        self._valid: re.Pattern[str] | None = None  # matches a symbol index past the table
        self._check_ident()
        self._check_header()
        headers = self._read_shdrs()
        self.sections: list[Section] = self._make_sections(headers)
        self.symtab_index = self._find_symtab()
        self.strtab_index = self.sections[self.symtab_index].link
        self._check_strtab(self.strtab_index, "symbol string table")

    @classmethod
    def load(cls, path: Path) -> ElfImage:
        """Read `path`: a regular file of at most MODULE_LIMIT bytes (a FIFO or /dev/zero
        is refused, not read forever), decompressed when it is a .ko.xz, .ko.zst or .ko.gz
        (by its magic bytes; to at most MODULE_LIMIT bytes too)."""
        data, _ = read_module(path, MODULE_LIMIT)
        return cls(Path(path), data)

    # --- validation -------------------------------------------------------------------------

    def _fail(self, what: str) -> NotElfError:
        return NotElfError(f"{self.label}: malformed or truncated ELF: {what}")

    def _check_ident(self) -> None:
        head = self.data[:6]
        for magic, kind in MAGICS.items():
            if head.startswith(magic):
                raise NotElfError(f"{self.label}: {kind}-compressed, not ELF; decompress it first")
        if not self.data.startswith(b"\x7fELF"):
            raise NotElfError(f"{self.label}: not an ELF file")
        if len(self.data) < 16:
            raise self._fail("truncated ELF identification")
        only = SUPPORTED
        eclass, edata = self.data[4], self.data[5]
        if eclass == 1:
            raise UnsupportedElfError(f"{self.label}: 32-bit ELF; {only}")
        if edata == 2:
            raise UnsupportedElfError(f"{self.label}: big-endian ELF; {only}")
        if eclass != 2 or edata != 1:
            raise self._fail(f"invalid ELF class/data bytes {eclass}/{edata}")
        if len(self.data) < EHDR_SIZE:
            raise self._fail("truncated ELF header")

    def _check_header(self) -> None:
        fields = _EHDR.unpack_from(self.data)
        etype, machine, self.shoff = fields[1], fields[2], fields[6]
        self.shentsize, self.shnum, self.shstrndx = fields[11], fields[12], fields[13]
        if machine not in MACHINES:
            raise UnsupportedElfError(
                f"{self.label}: machine {_MACHINES.get(machine, machine)}; {SUPPORTED}"
            )
        self.machine: Machine = MACHINES[machine]
        if etype != ET_REL:
            raise UnsupportedElfError(
                f"{self.label}: ELF type {_TYPES.get(etype, etype)}, expected a relocatable "
                "object (.o or .ko)"
            )
        if self.shnum == 0 or self.shoff == 0:
            raise self._fail("no section header table (or extended section numbering)")
        if self.shentsize != SHDR_SIZE:
            raise self._fail(f"section header size {self.shentsize}, expected {SHDR_SIZE}")
        if self.shoff + self.shnum * SHDR_SIZE > len(self.data):
            raise self._fail("section header table runs past the end of the file")
        if self.shstrndx >= self.shnum or self.shstrndx == 0:
            raise self._fail(f"section name table index {self.shstrndx} out of range")

    def _read_shdrs(self) -> list[tuple[int, ...]]:
        table = self.view[self.shoff : self.shoff + self.shnum * SHDR_SIZE]
        headers = list(_SHDR.iter_unpack(table))
        size = len(self.data)
        for i, (_, stype, _, _, offset, length, link, _, align, _) in enumerate(headers):
            if not i:
                continue
            if stype != SHT_NOBITS and offset + length > size:
                raise self._fail(f"section {i} runs past the end of the file")
            if align > MAX_ALIGN:
                raise self._fail(f"section {i} alignment {align}")
            if link >= self.shnum:
                raise self._fail(f"section {i} sh_link {link} out of range")
        return headers

    def _check_strtab(self, index: int, what: str, types: list[int] | None = None) -> None:
        if types is None:
            types = [s.type for s in self.sections]
        if not 0 < index < self.shnum or types[index] != SHT_STRTAB:
            raise self._fail(f"{what} (section {index}) is not a string table")

    def _make_sections(self, headers: list[tuple[int, ...]]) -> list[Section]:
        self._check_strtab(self.shstrndx, "section name table", [h[1] for h in headers])
        offset, size = headers[self.shstrndx][4], headers[self.shstrndx][5]
        names = self.data[offset : offset + size]
        out = []
        for i, h in enumerate(headers):
            name_off = h[0]
            if i and name_off >= len(names):
                raise self._fail(f"section {i} name offset out of range")
            name = cstring(names, name_off) if i else ""
            out.append(Section(i, name, h[1], h[2], h[4], h[5], h[6], h[7], h[8], h[9], name_off))
        return out

    def _find_symtab(self) -> int:
        found = [s.index for s in self.sections if s.type == SHT_SYMTAB]
        if not found:
            raise NoSymtabError(f"{self.label}: no symbol table (.symtab); was it stripped?")
        if len(found) > 1:
            raise self._fail("more than one symbol table")
        sec = self.sections[found[0]]
        if sec.entsize != SYM_SIZE or sec.size % SYM_SIZE or sec.size == 0:
            raise self._fail(f"symbol table entry size {sec.entsize} / size {sec.size}")
        if not sec.info <= sec.size // SYM_SIZE:
            raise self._fail("symbol table sh_info past its end")
        if any(s.type == SHT_SYMTAB_SHNDX for s in self.sections):
            raise UnsupportedElfError(f"{self.label}: extended section indexes are not supported")
        return found[0]

    # --- access ---------------------------------------------------------------------------

    def section_bytes(self, index: int) -> bytes:
        return bytes(self.section_view(index))

    def section_view(self, index: int) -> memoryview:
        """The section's bytes without a copy (for the writer)."""
        sec = self.sections[index]
        if sec.type == SHT_NOBITS:
            return memoryview(b"")
        return self.view[sec.offset : sec.offset + sec.size]

    def symbols(self) -> Symbols:
        """A writable copy of the symbol table, with every st_name and st_shndx checked."""
        syms = Symbols(bytearray(self.section_view(self.symtab_index)))
        strsize = self.sections[self.strtab_index].size
        if len(syms) and max(syms.names) >= max(strsize, 1):
            raise self._fail("a symbol name offset is past the string table")
        shnum = self.shnum
        if any(shnum <= s < SHN_LORESERVE for s in set(syms.shndx)):
            first = next(i for i, s in enumerate(syms.shndx) if shnum <= s < SHN_LORESERVE)
            raise self._fail(f"symbol {first} has section index out of range")
        return syms

    def strtab(self) -> bytes:
        return self.section_bytes(self.strtab_index)

    def validate_relocations(self) -> None:
        """Check every SHT_RELA section (entry size, link, target, symbol indexes)."""
        for sec in self.sections:
            if sec.type == SHT_RELA:
                self.relas(sec.index)

    def relas(self, index: int) -> Relas:
        """One SHT_RELA section over the file's bytes (no copy: every caller derives new
        bytes from it), symbol indexes checked against the symtab. Kept: the sets of
        symbols each section uses are built once."""
        known = self._relas.get(index)
        if known is not None:
            return known
        sec = self.sections[index]
        if sec.entsize != RELA_SIZE or sec.size % RELA_SIZE:
            raise self._fail(f"relocation section {sec.label} entry size {sec.entsize}")
        if sec.link != self.symtab_index:
            raise self._fail(f"relocation section {sec.label} does not use the symbol table")
        if not 0 < sec.info < self.shnum:
            raise self._fail(f"relocation section {sec.label} sh_info {sec.info} out of range")
        relas = Relas(self.section_view(index))
        if self._past_table(relas):
            raise self._fail(f"relocation section {sec.label} refers to a symbol past the table")
        self._relas[index] = relas
        return relas

    def _past_table(self, relas: Relas) -> bool:
        """Whether an entry's symbol index is past the symbol table."""
        nsyms = self.sections[self.symtab_index].size // SYM_SIZE
        text = relas.symbol_text()
        if text is None:  # an index past U+10FFFF
            return nsyms <= MAX_CHAR or max(relas.symbols()) >= nsyms
        if nsyms > MAX_CHAR:
            return False
        if self._valid is None:
            self._valid = re.compile(f"[^\\x00-{re.escape(chr(nsyms - 1))}]")
        return self._valid.search(text) is not None

    def rela_sections(self) -> list[Section]:
        return [s for s in self.sections if s.type == SHT_RELA]

    def modinfo(self) -> list[str]:
        for sec in self.sections:
            if sec.name == ".modinfo" and sec.type != SHT_NOBITS:
                raw = self.section_bytes(sec.index)
                return [s.decode("latin-1") for s in raw.split(b"\0") if s]
        return []

    def is_livepatch(self) -> bool:
        return "livepatch=Y" in self.modinfo()
