"""A tiny ELF with a symbol table, the link addresses of a BTF vmlinux and kallsyms-finder's
guess for Debian's 7.3.4+deb13-arm64 Image: shared by the Debian arm64 tests."""

from __future__ import annotations

import struct


def tiny_elf(symbols: list[tuple[str, int, int]]) -> bytes:
    """An ELF64 little-endian file with just a symbol table: (name, value, st_info)."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n, _, _ in symbols)
    syms = bytes(24)
    offset = 1
    for name, value, info in symbols:
        syms += struct.pack("<IBBHQQ", offset, info, 0, 1, value, 0)
        offset += len(name) + 1
    shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0"
    body = syms + strtab + shstrtab
    base = 64
    shoff = base + len(body)
    shdrs = bytes(64)
    shdrs += struct.pack("<IIQQQQIIQQ", 1, 2, 0, 0, base, len(syms), 2, 1, 8, 24)
    at = base + len(syms)
    shdrs += struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, at, len(strtab), 0, 0, 1, 0)
    at += len(strtab)
    shdrs += struct.pack("<IIQQQQIIQQ", 17, 3, 0, 0, at, len(shstrtab), 0, 0, 1, 0)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    head = struct.pack("<16sHHIQQQIHHHHHH", ident, 3, 183, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 4, 3)
    return head + body + shdrs


BTF_SYMBOLS = [
    ("__start_BTF", 0xFFFF80008208A000, 0x10),
    ("__stop_BTF", 0xFFFF8000826E4D6F, 0x10),
    ("btf_sock_ids", 0xFFFF8000826E7578, 0x10),
    ("$d", 0xFFFF8000826E5190, 0),  # a mapping symbol: never an anchor
    ("twice", 0xFFFF8000826E5000, 1),
    ("twice", 0xFFFF8000826E5004, 1),
    (".BTF", 0xFFFF80008208A000, 3),  # a section symbol
    ("undefined", 0, 0x10),
]


# What kallsyms-finder prints for Debian's 7.3.4+deb13-arm64 Image: it guesses the base.
GUESSED = [
    ("0000000003240000", "T", "_text"),
    ("0000000003250000", "T", "_stext"),
    ("00000000052ca000", "R", "__start_BTF"),
    ("0000000005924d6f", "R", "__stop_BTF"),
    ("00000000052ca000", "R", "twice"),
    ("00000000052ca008", "R", "twice"),
]
