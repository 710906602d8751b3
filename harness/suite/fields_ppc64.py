"""What powerpc's apply_relocate_add (arch/powerpc/kernel/module_64.c, 7.3, a kernel without
PPC_KERNEL_PCREL, ELF ABI v2 little endian) writes at a relocated field: pure functions over
integers and bytes.

Data relocations write S+A (ADDR64, ADDR32 truncated) or S+A-P (REL64, REL32) little endian.
REL16_* and TOC16_* write the low halfword of an instruction (at r_offset on little endian);
the TOC ones are relative to the module's TOC pointer my_r2() = (.toc's address & ~0xff) +
0x8000 (.stubs' address when the module has no .toc), which a caller must know (`toc`).

REL24 against an undefined or klp (SHN_LIVEPATCH) symbol never branches to the symbol: it
branches to a stub in the module's `.stubs` (stub_for_addr/create_stub), and after a `bl` the
next word becomes `ld r2,24(r1)` (restore_r2). So a checker reads, besides the 4-byte field:
- the word after it (pass `raw` as 8 bytes) to see the TOC restore after a `bl`;
- STUB_SIZE (40) bytes at the branch target (`stub_read(raw, place)` says where): struct
  ppc64_stub_entry { u32 jump[7]; u32 magic; func_desc_t funcdata; } with, on ELFv2,
  `addis r11,r2,HA; addi r11,r11,LO; std r2,24(r1); ld r12,32(r11); mtctr r12; bctr`,
  magic 0x73747562 ("stub") and funcdata = S+A (the 8 bytes at stub+32, what `ld r12` loads).
"""

from __future__ import annotations

from harness.klp.machines import PPC64
from harness.suite.fields_aarch64 import Plt

MASK64 = (1 << 64) - 1
REL24 = 10
ADDR32, ADDR64, REL32, REL64 = 1, 38, 26, 44
TOC, TOC16, TOC16_LO, TOC16_HA, TOC16_DS, TOC16_LO_DS = 51, 47, 48, 50, 63, 64
TOCSAVE, ENTRY, REL16_LO, REL16_HA = 109, 118, 250, 252
STUB_SIZE, STUB_MAGIC = 40, 0x73747562
LD_TOC, NOP = 0xE8410018, 0x60000000  # ld r2,24(r1) (R2_STACK_OFFSET 24 on ELFv2); nop
# the stub's fixed words (ppc64_stub_insns, ELFv2 without PCREL): std r2,24(r1);
# ld r12,32(r11); mtctr r12; bctr; the first two carry the stub's offset from r2
STUB_FIXED = (0xF8410018, 0xE98B0020, 0x7D8903A6, 0x4E800420)
ADDIS_R11_R2, ADDI_R11_R11 = 0x3D620000, 0x396B0000
# R_PPC64_ENTRY: the large-model prologue `ld r2,X(r12); add r2,r2,r12`, which the loader may
# turn into `addis r2,r12,HA(toc-P); addi r2,r2,LO(toc-P)`
LD_R2_R12, ADD_R2_R2_R12, ADDIS_R2_R12, ADDI_R2_R2 = 0xE84C0000, 0x7C426214, 0x3C4C0000, 0x38420000
_DATA = {ADDR32: 4, ADDR64: 8, REL32: 4, REL64: 8}
_TOC_HALF = {TOC16, TOC16_LO, TOC16_HA, TOC16_DS, TOC16_LO_DS}


def width(rtype: int) -> int:
    """The field's width in bytes (0: nothing written, or a type the loader refuses)."""
    return PPC64.loader.get(rtype, 0)


def branch_target(word: int, place: int) -> int:
    """Where the I-form branch `word` at `place` goes (AA=0)."""
    offset = word & 0x03FFFFFC
    if offset & 0x02000000:
        offset -= 1 << 26
    return (place + offset) & MASK64


def stub_read(raw: bytes, place: int) -> tuple[int, int] | None:
    """(address, length) of the stub a REL24 field read as `raw` branches to: what a checker
    must read and pass as `stub` (None when `raw` is not a branch)."""
    if len(raw) < 4:
        return None
    word = _word(raw, 0)
    return (branch_target(word, place), STUB_SIZE) if _is_branch(word) else None


def check_field(
    rtype: int,
    raw: bytes,
    place: int,
    symbol: int,
    addend: int,
    *,
    stub: bytes = b"",
    toc: int | None = None,
) -> str | None:
    """None when `raw` read at `place` holds what the loader writes for `symbol` + `addend`;
    else what is wrong, with what memory holds as evidence. `stub`: the STUB_SIZE bytes at
    the branch target of a REL24 (see stub_read); `toc`: the module's my_r2()."""
    value = (symbol + addend) & MASK64
    if rtype in _DATA:
        return _data(rtype, raw, place, value)
    if rtype == REL24:
        return _call(raw, place, value, stub, toc)
    if rtype in (REL16_HA, REL16_LO):
        return _half(rtype, raw, (value - place) & MASK64)
    if rtype == TOCSAVE:
        return None
    if toc is None:
        return f"{PPC64.reloc_name(rtype)} needs the module's TOC pointer (my_r2) to be checked"
    if rtype == TOC:
        return _data(ADDR64, raw, place, toc)
    if rtype in _TOC_HALF:
        return _half(rtype, raw, (value - toc) & MASK64)
    if rtype == ENTRY:
        return _entry(raw, place, toc)
    return f"{PPC64.reloc_name(rtype)} is refused by the PPC64 module loader"


def check_stub(stub: bytes, address: int, value: int, toc: int | None = None) -> str | None:
    """None when `stub` (read at `address`) is a ppc64_stub_entry that jumps to `value`."""
    if len(stub) < STUB_SIZE:
        return f"the stub at {address:#x} was not read ({STUB_SIZE} bytes needed)"
    words = [_word(stub, i) for i in range(0, 32, 4)]
    if words[0] & 0xFFFF0000 != ADDIS_R11_R2 or words[1] & 0xFFFF0000 != ADDI_R11_R11:
        return f"memory at {address:#x} is not a module stub ({words[0]:#010x} {words[1]:#010x})"
    if tuple(words[2:6]) != STUB_FIXED or words[7] != STUB_MAGIC:
        return f"memory at {address:#x} is not a module stub (magic {words[7]:#010x})"
    funcdata = int.from_bytes(stub[32:40], "little")
    if funcdata != value:
        return f"memory branches to a stub at {address:#x} that jumps to {funcdata:#x}"
    if toc is not None:
        r11 = (toc + (_sext(words[0] & 0xFFFF, 16) << 16) + _sext(words[1] & 0xFFFF, 16)) & MASK64
        if r11 != address:
            return f"the stub at {address:#x} loads its data from {r11 + 32:#x} (r2 {toc:#x})"
    return None


def _call(raw: bytes, place: int, value: int, stub: bytes, toc: int | None) -> str | None:
    if len(raw) < 4:
        return "a REL24 field is 4 bytes"
    word = _word(raw, 0)
    if not _is_branch(word):
        return f"memory holds {word:#010x}, not a b/bl instruction"
    dest = branch_target(word, place)
    if dest == value:
        return f"memory branches straight to {value:#x}, not through a stub (r12, r2 unset)"
    if word & 1 and len(raw) >= 8 and _word(raw, 4) != LD_TOC:
        after = _word(raw, 4)
        return f"the word after the bl holds {after:#010x}, not the TOC restore ld r2,24(r1)"
    return check_stub(stub, dest, value, toc)


def _data(rtype: int, raw: bytes, place: int, value: int) -> str | None:
    size = _DATA[rtype]
    if len(raw) != size:
        return f"{PPC64.reloc_name(rtype)} is {size} bytes, {len(raw)} were read"
    held = int.from_bytes(raw, "little")
    want = value if rtype in (ADDR32, ADDR64) else (value - place) & MASK64
    if held == want & ((1 << (8 * size)) - 1):
        if rtype == REL32 and not -(1 << 31) <= _sext(want, 64) < 1 << 31:
            return "a REL32 out of range, which the loader refuses"
        return None
    if rtype in (REL32, REL64):
        return f"memory points at {(place + _sext(held, 8 * size)) & MASK64:#x}"
    return f"memory holds {held:#x}"


def _half(rtype: int, raw: bytes, rel: int) -> str | None:
    if len(raw) != 2:
        return f"{PPC64.reloc_name(rtype)} is 2 bytes, {len(raw)} were read"
    held = int.from_bytes(raw, "little")
    if rtype in (REL16_HA, TOC16_HA):
        want, mask = ((rel + 0x8000) >> 16) & 0xFFFF, 0xFFFF
    else:
        want, mask = rel & 0xFFFF, 0xFFFC if rtype in (TOC16_DS, TOC16_LO_DS) else 0xFFFF
    return None if held & mask == want & mask else f"memory holds {held:#06x}"


def _entry(raw: bytes, place: int, toc: int) -> str | None:
    if len(raw) != 8:
        return f"R_PPC64_ENTRY is 8 bytes, {len(raw)} were read"
    first, second = _word(raw, 0), _word(raw, 4)
    if first & ~0xFFFC & 0xFFFFFFFF == LD_R2_R12 and second == ADD_R2_R2_R12:
        return None  # left alone (the loader does this when the TOC is out of 2 GiB reach)
    rel = (toc - place) & MASK64
    if first == ADDIS_R2_R12 | ((rel + 0x8000) >> 16) & 0xFFFF and second == ADDI_R2_R2 | (
        rel & 0xFFFF
    ):
        return None
    return f"memory holds {first:#010x} {second:#010x}, not the entry prologue"


def _is_branch(word: int) -> bool:
    return word & 0xFC000002 == 0x48000000  # opcode 18, AA=0


def _word(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def _sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


OOL_STUB_SIZE = 24  # struct ftrace_ool_stub with DYNAMIC_FTRACE_WITH_CALL_OPS (OOL selects it)


def stubs_size(calls: int, patchable: int = 0) -> int:
    """The bytes of `.stubs` the loader allocates (get_stubs_size): one ppc64_stub_entry per
    distinct (symbol, addend) REL24 of each SHT_RELA section (`calls`), plus the two ftrace
    stubs (ftrace_caller, ftrace_regs_caller: DYNAMIC_FTRACE_WITH_REGS, which livepatch needs),
    plus, with PPC_FTRACE_OUT_OF_LINE (ppc64 modules built with -fpatchable-function-entry),
    an out-of-line ftrace stub per `__patchable_function_entries` entry (`patchable`)."""
    ool = -(-patchable * OOL_STUB_SIZE // STUB_SIZE)
    return (calls + 2 + ool) * STUB_SIZE


def my_r2(toc_base: int) -> int:
    """The module's TOC pointer from its `.toc` address (`.stubs`' when it has no .toc)."""
    return (toc_base & ~0xFF) + 0x8000


def problem(
    rtype: int, addend: int, raw: bytes, place: int, symbol: int, stubs: Plt, toc: int | None
) -> str | None:
    """check_field with the stub a REL24 branches to taken from the bytes read of `.stubs`."""
    return check_field(rtype, raw, place, symbol, addend, stub=_stub(raw, place, stubs), toc=toc)


def meaning(rtype: int, addend: int, raw: bytes, place: int, stubs: Plt) -> str:
    """What a field read from memory stands for, as evidence."""
    if rtype == REL24 and (where := stub_read(raw, place)) is not None:
        stub = _stub(raw, place, stubs)
        if len(stub) == STUB_SIZE and _word(stub, 28) == STUB_MAGIC:
            funcdata = int.from_bytes(stub[32:40], "little")
            return f"memory branches to a stub at {where[0]:#x} that jumps to {funcdata:#x}"
        return f"memory branches to {where[0]:#x}"
    if rtype in _DATA and len(raw) == _DATA[rtype]:
        held = int.from_bytes(raw, "little")
        if rtype in (REL32, REL64):
            return f"memory points at {(place + _sext(held, 8 * len(raw)) - addend) & MASK64:#x}"
        return f"memory points at {(held - addend) & MASK64:#x}"
    return f"memory holds {raw.hex()}"


def _stub(raw: bytes, place: int, stubs: Plt) -> bytes:
    where = stub_read(raw, place)
    if where is None or not stubs.data:
        return b""
    at = where[0] - stubs.base
    return stubs.data[at : at + STUB_SIZE] if 0 <= at <= len(stubs.data) - STUB_SIZE else b""
