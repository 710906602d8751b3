"""What arm64's apply_relocate_add (arch/arm64/kernel/module.c and module-plts.c, read in
linux-source-7.3) writes at a relocated field, and what a field read from memory stands for:
pure functions over integers and bytes.

Data relocations write S+A or S+A-P at 8, 4 or 2 bytes. Instruction relocations write only an
immediate: `reloc_insn_imm` puts bits [lsb, lsb+len) of S+A (ABS), S+A-P (PREL) or
page(S+A)-page(P) (PAGE) into the instruction's field; `reloc_insn_movw` puts 16 bits and, for
the signed groups, turns the instruction into MOVZ or MOVN. So memory is compared with the
loader's value in those bits (what the rest of the word held came from the module, untouched).

Two cases leave the instruction pointing elsewhere on purpose:
- CALL26/JUMP26 out of the ±128 MiB branch range: module_emit_plt_entry() (module-plts.c)
  writes a PLT entry `adrp x16, page(S+A); add x16, x16, #lo12(S+A); br x16` in the module's
  .plt and the branch goes there; the entry, read from memory, must lead to S+A.
- ADRP at a page offset >= 0xff8 on a CPU with erratum 843419: reloc_insn_adrp() makes it an
  ADR when page(S+A) is in range, else a B to a veneer `adrp rd; add rd, rd, #0; b P+4`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.klp.machines import AARCH64

ABS, PREL, PAGE = "abs", "prel", "page"
# instruction fields: (lowest bit, bits); ADR/ADRP's immediate is split, see _field
IMM26, IMM19, IMM16, IMM14, IMM12, ADR = (0, 26), (5, 19), (5, 16), (5, 14), (10, 12), (0, 21)
CALL26, JUMP26 = 283, 282
BR_X16 = 0xD61F0200
PLT_ENTRY = 12  # struct plt_entry: adrp, add, br
BRANCH_BITS = 28  # a B/BL reaches ±128 MiB


@dataclass(frozen=True)
class Insn:
    op: str
    lsb: int  # the value's lowest bit the field holds
    length: int  # how many bits of the value it holds
    imm: tuple[int, int]
    signed_movw: bool = False  # MOVW_SABS/PREL (not _NC): MOVZ or MOVN by the value's sign


def _movw(op: str, lsb: int, signed: bool) -> Insn:
    return Insn(op, lsb, 16, IMM16, signed)


DATA = {257: ABS, 258: ABS, 259: ABS, 260: PREL, 261: PREL, 262: PREL}
INSNS: dict[int, Insn] = {
    263: _movw(ABS, 0, False),
    264: _movw(ABS, 0, False),
    265: _movw(ABS, 16, False),
    266: _movw(ABS, 16, False),
    267: _movw(ABS, 32, False),
    268: _movw(ABS, 32, False),
    269: _movw(ABS, 48, False),
    270: _movw(ABS, 0, True),
    271: _movw(ABS, 16, True),
    272: _movw(ABS, 32, True),
    273: Insn(PREL, 2, 19, IMM19),  # LD_PREL_LO19
    274: Insn(PREL, 0, 21, ADR),  # ADR_PREL_LO21
    275: Insn(PAGE, 12, 21, ADR),  # ADR_PREL_PG_HI21
    276: Insn(PAGE, 12, 21, ADR),
    277: Insn(ABS, 0, 12, IMM12),  # ADD_ABS_LO12_NC
    278: Insn(ABS, 0, 12, IMM12),  # LDST8
    284: Insn(ABS, 1, 11, IMM12),  # LDST16
    285: Insn(ABS, 2, 10, IMM12),
    286: Insn(ABS, 3, 9, IMM12),
    299: Insn(ABS, 4, 8, IMM12),  # LDST128
    279: Insn(PREL, 2, 14, IMM14),  # TSTBR14
    280: Insn(PREL, 2, 19, IMM19),  # CONDBR19
    JUMP26: Insn(PREL, 2, 26, IMM26),
    CALL26: Insn(PREL, 2, 26, IMM26),
    287: _movw(PREL, 0, True),
    288: _movw(PREL, 0, False),
    289: _movw(PREL, 16, True),
    290: _movw(PREL, 16, False),
    291: _movw(PREL, 32, True),
    292: _movw(PREL, 32, False),
    293: _movw(PREL, 48, True),
}
_ADRP_TYPES = frozenset({275, 276})
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Plt:
    """Bytes read from the loaded module's .plt: where it starts and what was read."""

    base: int = 0
    data: bytes = b""

    def word(self, address: int) -> int | None:
        at = address - self.base
        if at < 0 or at % 4 or at + 4 > len(self.data):
            return None
        return int.from_bytes(self.data[at : at + 4], "little")


def width(rtype: int) -> int:
    return AARCH64.loader.get(rtype, 0)


def plt_slots(types: Sequence[int], shndx: Sequence[int], section: int) -> int:
    """PLT entries count_plts() may reserve for a rela section applying to `section` (at
    most): its branches to symbols in other sections, its ADRPs (erratum-843419 veneers)."""
    branches = sum(
        t in (CALL26, JUMP26) and s != section for t, s in zip(types, shndx, strict=True)
    )
    return branches + sum(t in _ADRP_TYPES for t in types)


def plt_size(slots: int) -> int:
    """The bytes of .plt that `slots` entries may use: module_frob_arch_sections() sizes it
    (entries + slack for erratum-skipped slots + 1) * sizeof(struct plt_entry)."""
    return (slots + -(-slots // (4096 // PLT_ENTRY)) + 1) * PLT_ENTRY if slots else 0


def problem(rtype: int, addend: int, raw: bytes, place: int, symbol: int, plt: Plt) -> str | None:
    """None when `raw` holds what the loader writes for `symbol` (through a PLT entry or an
    ADRP veneer where it must); else what memory holds, as evidence."""
    value = (symbol + addend) & MASK64
    if rtype in DATA:
        bits = 8 * len(raw)
        held = int.from_bytes(raw, "little")
        return (
            None
            if held == _reloc(DATA[rtype], value, place) & _mask(bits)
            else _data(rtype, raw, addend, place)
        )
    insn = INSNS.get(rtype)
    if insn is None:
        return None if rtype in (0, 256) else f"{AARCH64.reloc_name(rtype)} cannot be checked"
    word = int.from_bytes(raw, "little")
    if insn.imm == IMM26:
        return _branch(rtype, word, place, value, plt)
    if rtype in _ADRP_TYPES and not _is_adrp(word):
        return _adrp_variant(word, place, value, plt)
    if insn.imm == IMM16 and (word & 0x1F800000) != 0x12800000:
        return f"memory holds {word:#010x}, not a MOVZ/MOVN/MOVK instruction"
    want, opcode = _insn_value(insn, value, place)
    if _field(word, insn.imm) == want and (opcode is None or (word >> 29) & 3 == opcode):
        return None
    return _insn_meaning(rtype, word, place, addend)


def meaning(rtype: int, addend: int, raw: bytes, place: int, plt: Plt) -> str:
    """What the field read from memory stands for, as evidence."""
    if rtype in DATA:
        return _data(rtype, raw, addend, place)
    word = int.from_bytes(raw, "little")
    if rtype in (CALL26, JUMP26):
        dest = branch_target(word, place)
        through = plt_target(plt, dest)
        via = "" if through is None else f", a PLT entry that jumps to {through:#x}"
        return f"memory branches to {dest:#x}{via}"
    return _insn_meaning(rtype, word, place, addend)


def _branch(rtype: int, word: int, place: int, value: int, plt: Plt) -> str | None:
    opcode = 0x94000000 if rtype == CALL26 else 0x14000000
    if word & 0xFC000000 != opcode:
        return f"memory holds {word:#010x}, not a {'BL' if rtype == CALL26 else 'B'} instruction"
    dest = branch_target(word, place)
    if dest == value:
        return None
    through = plt_target(plt, dest)
    if through is None:
        where = "outside the module's .plt" if plt.data else "and the module's .plt was not read"
        return f"memory branches to {dest:#x} ({where})"
    if through != value:
        return f"memory branches to {dest:#x}, a PLT entry that jumps to {through:#x}"
    if _fits(value - place, BRANCH_BITS):  # the loader only uses a PLT out of range
        return f"memory branches through a PLT entry at {dest:#x} to a target in direct range"
    return None


def _adrp_variant(word: int, place: int, value: int, plt: Plt) -> str | None:
    """reloc_insn_adrp() at a forbidden offset: ADR to the page, or B to a veneer."""
    page = value & ~0xFFF
    if place & 0xFFF < 0xFF8:  # is_forbidden_offset_for_adrp(): only there
        return f"memory holds {word:#010x}, not an ADRP instruction"
    if word & 0x9F000000 == 0x10000000:  # ADR
        points = (place + _sext(_field(word, ADR), 21)) & MASK64
        return None if points == page else f"memory holds an ADR to {points:#x}"
    if word & 0xFC000000 == 0x14000000:  # B to a veneer
        dest = branch_target(word, place)
        back = plt.word(dest + 8)
        if (
            _pair(plt, dest, None) == page
            and back is not None
            and back & 0xFC000000 == 0x14000000
            and branch_target(back, dest + 8) == (place + 4) & MASK64
        ):
            return None
        return f"memory branches to {dest:#x}, not a veneer for page {page:#x}"
    return f"memory holds {word:#010x}, not an ADRP instruction"


def plt_target(plt: Plt, entry: int) -> int | None:
    """Where the PLT entry at `entry` jumps (get_plt_entry's adrp/add/br x16), or None."""
    if plt.word(entry + 8) != BR_X16:
        return None
    return _pair(plt, entry, 16)


def _pair(plt: Plt, entry: int, reg: int | None) -> int | None:
    """The address `adrp rd, page; add rd, rd, #lo12` at `entry` computes (rd = reg if given)."""
    adrp, add = plt.word(entry), plt.word(entry + 4)
    if adrp is None or add is None or not _is_adrp(adrp):
        return None
    rd = adrp & 0x1F
    if (reg is not None and rd != reg) or add & 0xFFC003FF != 0x91000000 | rd << 5 | rd:
        return None
    page = (entry & ~0xFFF) + (_sext(_field(adrp, ADR), 21) << 12)
    return (page + _field(add, IMM12)) & MASK64


def _insn_value(insn: Insn, value: int, place: int) -> tuple[int, int | None]:
    """The field's value reloc_insn_imm/_movw writes, and the MOVZ(2)/MOVN(0) opcode the signed
    MOVW groups force (None: the opcode is left alone)."""
    sval = _signed(_reloc(insn.op, value, place))
    imm = sval >> insn.lsb
    if insn.imm != IMM16:
        return imm & _mask(insn.length), None
    if not insn.signed_movw:
        return imm & 0xFFFF, None
    return (imm if sval >= 0 else ~imm) & 0xFFFF, 2 if sval >= 0 else 0


def _insn_meaning(rtype: int, word: int, place: int, addend: int) -> str:
    insn = INSNS[rtype]
    held = _field(word, insn.imm)
    if insn.imm == IMM16:
        return f"memory holds {held:#06x} in bits {insn.lsb}-{insn.lsb + 15} ({word:#010x})"
    if insn.op == ABS:
        return f"memory holds {held << insn.lsb:#x} as the low 12 bits"
    offset = _sext(held, insn.length) << insn.lsb
    if insn.op == PAGE:
        return f"memory points at page {((place & ~0xFFF) + offset) & MASK64:#x}"
    return f"memory points at {(place + offset - addend) & MASK64:#x}"


def _data(rtype: int, raw: bytes, addend: int, place: int) -> str:
    held = int.from_bytes(raw, "little")
    if DATA[rtype] == PREL:
        held = _sext(held, 8 * len(raw)) + place
    return f"memory points at {(held - addend) & MASK64:#x}"


def _reloc(op: str, value: int, place: int) -> int:
    """do_reloc(): the 64-bit value an operation gives, unsigned."""
    if op == ABS:
        return value
    if op == PREL:
        return (value - place) & MASK64
    return ((value & ~0xFFF) - (place & ~0xFFF)) & MASK64


def _field(word: int, imm: tuple[int, int]) -> int:
    if imm == ADR:  # immhi (bits 5-23) : immlo (bits 29-30)
        return ((word >> 5) & 0x7FFFF) << 2 | (word >> 29) & 3
    shift, bits = imm
    return (word >> shift) & _mask(bits)


def branch_target(word: int, place: int) -> int:
    return (place + (_sext(word & 0x3FFFFFF, 26) << 2)) & MASK64


def _is_adrp(word: int) -> bool:
    return word & 0x9F000000 == 0x90000000


def _fits(value: int, bits: int) -> bool:
    signed = _signed(value & MASK64)
    return -(1 << (bits - 1)) <= signed < 1 << (bits - 1)


def _mask(bits: int) -> int:
    return (1 << bits) - 1


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _signed(value: int) -> int:
    return _sext(value & MASK64, 64)
