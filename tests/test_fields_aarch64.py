"""arm64's loader encodings on synthetic words, for the cases the captured guests do not hit
(harness.suite.fields_aarch64): a PLT used for a target in direct range, signed MOVW groups,
erratum 843419's ADR and veneer; and the kernel-patched site tables of Debian's own arm64
modules (tests/data/aarch64). Real bytes: tests/test_memcheck_aarch64.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.klp.elfread import ElfImage
from harness.suite.fields_aarch64 import Plt, problem
from harness.suite.memcheck import module_relocs

DEBIAN = Path(__file__).parent / "data" / "aarch64"
CALL26 = 283


def test_a_plt_entry_for_a_target_in_direct_range_is_not_what_the_loader_writes() -> None:
    place, symbol, entry = 0x10_0000, 0x20_0000, 0x10_1000
    plt = Plt(entry, _plt_entry(entry, symbol))
    bl = 0x94000000 | ((entry - place) >> 2)
    assert problem(CALL26, 0, bl.to_bytes(4, "little"), place, symbol, plt) == (
        f"memory branches through a PLT entry at {entry:#x} to a target in direct range"
    )
    far = symbol + (1 << 30)
    plt = Plt(entry, _plt_entry(entry, far))
    assert problem(CALL26, 0, bl.to_bytes(4, "little"), place, far, plt) is None


def test_signed_movw_becomes_movz_or_movn() -> None:
    """MOVW_SABS_G0 (270): reloc_insn_movw sets MOVZ for a value >= 0, else MOVN with the
    inverted immediate."""
    movz = 0xD2800000 | (0x1234 << 5)
    assert problem(270, 0, movz.to_bytes(4, "little"), 0, 0x1234, Plt()) is None
    movn = 0x92800000 | ((~-5 & 0xFFFF) << 5)
    assert problem(270, 0, movn.to_bytes(4, "little"), 0, -5 & (1 << 64) - 1, Plt()) is None
    held = problem(270, 0, movz.to_bytes(4, "little"), 0, -5 & (1 << 64) - 1, Plt())
    assert held is not None and "in bits 0-15" in held


def test_an_adrp_made_adr_for_erratum_843419_verifies() -> None:
    place, symbol = 0xFFFF800000010FF8, 0xFFFF800000023456
    adr = 0x10000000 | _adr_imm((symbol & ~0xFFF) - place)
    assert problem(275, 0, adr.to_bytes(4, "little"), place, symbol, Plt()) is None
    wrong = 0x10000000 | _adr_imm((symbol & ~0xFFF) + 0x1000 - place)
    assert "memory holds an ADR to" in str(
        problem(275, 0, wrong.to_bytes(4, "little"), place, symbol, Plt())
    )


def _adr_imm(offset: int) -> int:
    imm = offset & ((1 << 21) - 1)
    return (imm & 3) << 29 | (imm >> 2) << 5


def _plt_entry(entry: int, dest: int) -> bytes:
    """get_plt_entry(): adrp x16, page(dest); add x16, x16, #lo12(dest); br x16."""
    adrp = 0x90000010 | _adr_imm(((dest & ~0xFFF) - (entry & ~0xFFF)) >> 12)
    add = 0x91000210 | (dest & 0xFFF) << 10
    return b"".join(w.to_bytes(4, "little") for w in (adrp, add, 0xD61F0200))


def test_an_adrp_veneer_for_erratum_843419_verifies() -> None:
    """reloc_insn_adrp() out of ADR range: B to a veneer `adrp rd; add rd, rd, #0; b P+4`."""
    place, symbol, veneer = 0xFFFF800000010FFC, 0xFFFF800090023456, 0xFFFF800000012000
    page = symbol & ~0xFFF
    adrp = 0x90000003 | _adr_imm((page - veneer) >> 12)  # x3
    back = 0x14000000 | (((place + 4 - (veneer + 8)) >> 2) & 0x3FFFFFF)
    words = (adrp, 0x91000063, back)  # add x3, x3, #0
    plt = Plt(veneer, b"".join(w.to_bytes(4, "little") for w in words))
    b = 0x14000000 | ((veneer - place) >> 2)
    assert problem(275, 0, b.to_bytes(4, "little"), place, symbol, plt) is None
    assert "not a veneer for page" in str(
        problem(275, 0, b.to_bytes(4, "little"), place, symbol + 0x1000, plt)
    )
    # at an ordinary offset the loader always writes an ADRP
    assert "not an ADRP" in str(
        problem(275, 0, b.to_bytes(4, "little"), place - 0x100, symbol, plt)
    )


@pytest.mark.parametrize(
    ("name", "tables"),
    [
        ("sysv.ko", {("__patchable_function_entries", 8): 69, (".altinstructions", 4): 26}),
        (
            "uio_sercos3.ko",
            {
                ("__patchable_function_entries", 8): 6,
                (".altinstructions", 4): 9,
                ("__jump_table", 4): 1,
            },
        ),
    ],
)
def test_sites_of_debian_arm64_modules(name: str, tables: dict[tuple[str, int], int]) -> None:
    """Debian's own arm64 modules (tests/data/aarch64): each alt_instr's orig_len byte (offset
    10 of 12) gives its site's length; ftrace's two NOPs and jump labels are fixed."""
    data = (DEBIAN / name).read_bytes()
    found = module_relocs(ElfImage(Path(name), data))
    counted: dict[tuple[str, int], int] = {}
    for site in found.sites:
        counted[site.table, site.length] = counted.get((site.table, site.length), 0) + 1
    assert counted == tables
    assert {s.section for s in found.sites} <= {
        ".text",
        ".init.text",
        ".exit.text",
        ".text.unlikely",
    }


@pytest.mark.parametrize(
    ("rtype", "opcode", "encode"),
    [
        (273, 0x58000000, lambda off: (off >> 2 & 0x7FFFF) << 5),  # LD_PREL_LO19: ldr x0, label
        (274, 0x10000000, lambda off: _adr_imm(off)),  # ADR_PREL_LO21: adr x0, label
        (280, 0x54000000, lambda off: (off >> 2 & 0x7FFFF) << 5),  # CONDBR19: b.eq label
        (279, 0x36000000, lambda off: (off >> 2 & 0x3FFF) << 5),  # TSTBR14: tbz w0, #0, label
    ],
)
def test_short_range_pc_relative_fields(
    rtype: int, opcode: int, encode: Callable[[int], int]
) -> None:
    """Types that cannot reach vmlinux from a module (±1 MiB, ±32 KiB): reloc_insn_imm's
    S+A-P, bits 2.. (or 0.. for ADR), on words encoded here."""
    place, symbol = 0xFFFF800008001000, 0xFFFF800008001084
    word = (opcode | encode(symbol - place)).to_bytes(4, "little")
    assert problem(rtype, 0, word, place, symbol, Plt()) is None
    assert problem(rtype, 0, word, place, symbol + 4, Plt()) == f"memory points at {symbol:#x}"
    back = (opcode | encode(-0x40)).to_bytes(4, "little")
    assert problem(rtype, 0, back, place, place - 0x40, Plt()) is None  # a negative offset
