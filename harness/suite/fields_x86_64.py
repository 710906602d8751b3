"""What x86-64's apply_relocate_add (arch/x86/kernel/module.c) writes at a relocated field,
and what a field read from memory stands for: pure functions over integers and bytes.

The loader writes S+A (64, 32, 32S) or S+A-P (PC32, PLT32, PC64) truncated to the field's
width; harness.suite.memcheck compares memory with that for the guest's own symbol address.
"""

from __future__ import annotations

from harness.klp.machines import X86_64

PC_RELATIVE = frozenset({2, 4, 24})  # PC32, PLT32, PC64
UNSIGNED_32 = 10  # R_X86_64_32: zero-extended, every other 4-byte field is signed


def width(rtype: int) -> int:
    return X86_64.loader.get(rtype, 0)


def expected(rtype: int, addend: int, symbol: int, place: int) -> int:
    """The loader's value at the field's width, unsigned."""
    value = symbol + addend - (place if rtype in PC_RELATIVE else 0)
    return value & ((1 << (8 * width(rtype))) - 1)


def target(rtype: int, addend: int, held: int, place: int) -> int:
    """The address a field's value stands for (S in S+A or S+A-P)."""
    bits = 8 * width(rtype)
    value = held - (1 << bits) if rtype != UNSIGNED_32 and held >> (bits - 1) else held
    if rtype in PC_RELATIVE:
        value += place
    return (value - addend) & ((1 << 64) - 1)


def problem(rtype: int, addend: int, raw: bytes, place: int, symbol: int) -> str | None:
    """None when `raw` holds what the loader writes for `symbol`; else what memory holds."""
    held = int.from_bytes(raw, "little")
    if held == expected(rtype, addend, symbol, place):
        return None
    return meaning(rtype, addend, raw, place)


def meaning(rtype: int, addend: int, raw: bytes, place: int) -> str:
    """What the field read from memory stands for, as evidence."""
    return f"memory points at {target(rtype, addend, int.from_bytes(raw, 'little'), place):#x}"
