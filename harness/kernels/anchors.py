"""Link addresses the kernel's own build left beside a Debian kernel: the headers package of
6.12+ ships `vmlinux`, an ELF holding the kernel's BTF at its linked addresses and a symbol
table (__start_BTF, __stop_BTF, the __BTF_ID__* objects ...). Those are anchors for the table
kallsyms-finder recovers from an arm64 Image, whose base it has to guess."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from harness.errors import HarnessError, KernelError
from harness.fileio import read_regular

LIMIT = 256 << 20  # the BTF vmlinux is a few MB; a full one is far below this too
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
STT_SECTION = 3


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode(errors="replace")


def link_addresses(vmlinux: Path) -> dict[str, int]:
    """{name: st_value} of every symbol of `vmlinux` (ELF64 little-endian) whose name occurs
    once and whose value is not 0; mapping symbols ($d, $x) and section symbols left out.
    A KernelError names what is wrong with the file."""
    try:
        data = read_regular(vmlinux, LIMIT, what="kernel ELF")
    except HarnessError as err:
        raise KernelError(str(err)) from None
    bad = KernelError(f"{vmlinux}: not a little-endian ELF64 file with a symbol table")
    if len(data) < _EHDR.size or data[:6] != b"\x7fELF\x02\x01":
        raise bad
    fields = _EHDR.unpack_from(data)
    shoff, shentsize, shnum = fields[6], fields[11], fields[12]
    if shentsize != _SHDR.size or shoff + shnum * _SHDR.size > len(data):
        raise bad
    headers = [_SHDR.unpack_from(data, shoff + i * _SHDR.size) for i in range(shnum)]
    symtabs = [h for h in headers if h[1] == SHT_SYMTAB]
    if len(symtabs) != 1 or symtabs[0][6] >= shnum:
        raise bad
    sym_off, sym_size = symtabs[0][4], symtabs[0][5]
    str_hdr = headers[symtabs[0][6]]
    strtab = data[str_hdr[4] : str_hdr[4] + str_hdr[5]]
    if sym_off + sym_size > len(data) or str_hdr[4] + str_hdr[5] > len(data):
        raise bad
    found: list[tuple[str, int]] = []
    for off in range(sym_off, sym_off + sym_size - _SYM.size + 1, _SYM.size):
        name_off, info, _, _, value, _ = _SYM.unpack_from(data, off)
        name = _cstring(strtab, name_off) if name_off < len(strtab) else ""
        if name and value and info & 0xF != STT_SECTION and not name.startswith("$"):
            found.append((name, value))
    return _unique(found)


def _unique(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    pairs = list(pairs)
    counts = Counter(name for name, _ in pairs)
    return {name: value for name, value in pairs if counts[name] == 1}
