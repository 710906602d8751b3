"""harness.suite.fields_ppc64: what powerpc's module loader writes at a field, checked on
fields built by hand from the loader's encodings (module_64.c, 7.3)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.suite.fields_aarch64 import Plt
from harness.suite.fields_ppc64 import (
    ADDR32,
    ADDR64,
    ENTRY,
    LD_TOC,
    NOP,
    REL24,
    REL32,
    REL64,
    STUB_MAGIC,
    STUB_SIZE,
    TOC,
    TOC16_HA,
    TOC16_LO_DS,
    TOCSAVE,
    branch_target,
    check_field,
    check_stub,
    meaning,
    my_r2,
    problem,
    stub_read,
    stubs_size,
    width,
)

PLACE = 0xC008000000010040  # a call site in a module (vmalloc space)
STUBS = 0xC008000000010800  # the module's .stubs
TOC_PTR = 0xC008000000028000  # my_r2(): .toc & ~0xff + 0x8000
SYMBOL = 0xC000000000123450  # a vmlinux function


def _ha(v: int) -> int:
    return ((v + 0x8000) >> 16) & 0xFFFF


def stub(address: int, target: int, toc: int = TOC_PTR) -> bytes:
    """A ppc64_stub_entry as create_stub() writes it (ELFv2, no PCREL)."""
    rel = address - toc
    words = [0x3D620000 | _ha(rel), 0x396B0000 | rel & 0xFFFF]
    words += [0xF8410018, 0xE98B0020, 0x7D8903A6, 0x4E800420, 0, STUB_MAGIC]
    return struct.pack("<8IQ", *words, target)


def bl(place: int, dest: int, after: int = LD_TOC) -> bytes:
    return struct.pack("<II", 0x48000001 | (dest - place) & 0x03FFFFFC, after)


def test_a_call_through_its_stub_with_the_toc_restore() -> None:
    raw = bl(PLACE, STUBS)
    assert stub_read(raw, PLACE) == (STUBS, STUB_SIZE)
    assert check_field(REL24, raw, PLACE, SYMBOL, 0, stub=stub(STUBS, SYMBOL)) is None
    assert check_field(REL24, raw, PLACE, SYMBOL, 0, stub=stub(STUBS, SYMBOL), toc=TOC_PTR) is None
    assert check_field(REL24, raw[:4], PLACE, SYMBOL, 0, stub=stub(STUBS, SYMBOL)) is None


def test_call_problems() -> None:
    good = stub(STUBS, SYMBOL)
    raw = bl(PLACE, STUBS, after=NOP)
    assert "not the TOC restore" in str(check_field(REL24, raw, PLACE, SYMBOL, 0, stub=good))
    raw = bl(PLACE, STUBS)
    assert "was not read" in str(check_field(REL24, raw, PLACE, SYMBOL, 0))
    other = stub(STUBS, SYMBOL + 0x40)
    msg = check_field(REL24, raw, PLACE, SYMBOL, 0, stub=other)
    assert msg == f"memory branches to a stub at {STUBS:#x} that jumps to {SYMBOL + 0x40:#x}"
    assert "loads its data" in str(check_stub(good, STUBS, SYMBOL, toc=TOC_PTR + 0x100))
    assert "not a module stub" in str(check_stub(bytes(STUB_SIZE), STUBS, SYMBOL))
    direct = bl(PLACE, PLACE + 0x1000)
    assert "straight" in str(check_field(REL24, direct, PLACE, PLACE + 0x1000, 0, stub=good))
    assert "not a b/bl" in str(check_field(REL24, struct.pack("<I", NOP), PLACE, SYMBOL, 0))


def test_a_sibling_call_needs_no_restore() -> None:
    raw = struct.pack("<II", 0x48000000 | (STUBS - PLACE), NOP)  # b, not bl
    assert check_field(REL24, raw, PLACE, SYMBOL, 0, stub=stub(STUBS, SYMBOL)) is None


def test_branch_target_is_signed() -> None:
    assert branch_target(0x4BFFFFF1, 0x1000) == 0x1000 - 0x10


@pytest.mark.parametrize(
    ("rtype", "want"),
    [
        (ADDR64, struct.pack("<Q", SYMBOL + 8)),
        (ADDR32, struct.pack("<I", (SYMBOL + 8) & 0xFFFFFFFF)),
        (REL64, struct.pack("<q", SYMBOL + 8 - PLACE)),
    ],
)
def test_data(rtype: int, want: bytes) -> None:
    assert check_field(rtype, want, PLACE, SYMBOL, 8) is None
    assert check_field(rtype, bytes(len(want)), PLACE, SYMBOL, 8) is not None
    assert width(rtype) == len(want)


def test_rel32_range() -> None:
    near = PLACE + 0x100
    assert check_field(REL32, struct.pack("<i", 0x100), PLACE, near, 0) is None
    far = struct.pack("<I", (SYMBOL - PLACE) & 0xFFFFFFFF)
    assert "out of range" in str(check_field(REL32, far, PLACE, SYMBOL, 0))


def test_toc_relative_fields_need_the_toc() -> None:
    data = TOC_PTR - 0x7FF0 + 0x18  # a .toc slot
    ha = struct.pack("<H", _ha(data - TOC_PTR))
    lo = struct.pack("<H", (data - TOC_PTR) & 0xFFFC | 2)  # low 2 bits: the DS insn's own
    assert check_field(TOC16_HA, ha, PLACE, data, 0, toc=TOC_PTR) is None
    assert check_field(TOC16_LO_DS, lo, PLACE, data, 0, toc=TOC_PTR) is None
    assert "TOC pointer" in str(check_field(TOC16_HA, ha, PLACE, data, 0))
    assert check_field(TOC, struct.pack("<Q", TOC_PTR), PLACE, 0, 0, toc=TOC_PTR) is None
    assert check_field(TOCSAVE, b"", PLACE, 0, 0) is None and width(TOCSAVE) == 0


def test_entry_prologue_either_form() -> None:
    kept = struct.pack("<II", 0xE84C0000 | 0xFFF8, 0x7C426214)  # ld r2,-8(r12); add r2,r2,r12
    assert check_field(ENTRY, kept, PLACE, 0, 0, toc=TOC_PTR) is None
    rel = TOC_PTR - PLACE
    fast = struct.pack("<II", 0x3C4C0000 | _ha(rel), 0x38420000 | rel & 0xFFFF)
    assert check_field(ENTRY, fast, PLACE, 0, 0, toc=TOC_PTR) is None
    assert check_field(ENTRY, bytes(8), PLACE, 0, 0, toc=TOC_PTR) is not None


def test_a_refused_type() -> None:
    assert "refused" in str(check_field(116, bytes(4), PLACE, SYMBOL, 0, toc=TOC_PTR))


# Real memory: three converted samples loaded in a ppc64le 7.3 guest (QEMU pseries, TCG), their
# sections read from /proc/kcore (tests/data/ppc64le/memory/, README there).
MEMORY = Path(__file__).parent / "data" / "ppc64le" / "memory"
CAPTURED = sorted(p.stem for p in MEMORY.glob("*.json"))


class Loaded:
    def __init__(self, module: str) -> None:
        doc = json.loads((MEMORY / f"{module}.json").read_text())
        self.symbols = {n: int(a, 16) for n, a in doc["symbols"].items()}
        self.sections = {
            n: (int(s["address"], 16), bytes.fromhex(s["bytes"]))
            for n, s in doc["sections"].items()
        }
        self.toc = (self.sections[".toc"][0] & ~0xFF) + 0x8000  # my_r2()

    def read(self, address: int, size: int) -> bytes:
        for base, data in self.sections.values():
            if base <= address and address + size <= base + len(data):
                return data[address - base : address - base + size]
        return b""


def klp_entries(ko: Path) -> list[tuple[str, int, int, int, str]]:
    """(target section, offset, type, addend, symbol) of every klp relocation of `ko`."""
    out = []
    with ko.open("rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.name.startswith(".klp.rela."):
                syms = elf.get_section(sec["sh_link"])
                assert isinstance(syms, SymbolTableSection)
                target = elf.get_section(sec["sh_info"]).name
                for r in sec.iter_relocations():
                    klp = syms.get_symbol(r["r_info_sym"]).name
                    name = re.fullmatch(r"\.klp\.sym\.vmlinux\.(.+),0", klp)
                    assert name, klp
                    out.append((target, r["r_offset"], r["r_info_type"], r["r_addend"], name[1]))
    return out


def check_loaded(mem: Loaded, entry: tuple[str, int, int, int, str]) -> str | None:
    target, offset, rtype, addend, name = entry
    place = mem.sections[target][0] + offset
    raw = mem.read(place, 8 if rtype == REL24 else width(rtype))  # a call: and the word after
    where = stub_read(raw, place) if rtype == REL24 else None
    stub = mem.read(*where) if where else b""
    return check_field(rtype, raw, place, mem.symbols[name], addend, stub=stub, toc=mem.toc)


@pytest.mark.parametrize("module", CAPTURED)
def test_every_klp_relocation_in_real_memory(module: str) -> None:
    mem = Loaded(module)
    entries = klp_entries(MEMORY / f"{module}.klp.ko")
    assert entries
    assert {e[0]: check_loaded(mem, e) for e in entries} == dict.fromkeys({e[0] for e in entries})


def test_real_calls_go_through_stubs_to_the_symbol() -> None:
    mem = Loaded("klp_address_taken")
    calls = [e for e in klp_entries(MEMORY / "klp_address_taken.klp.ko") if e[2] == REL24]
    assert len(calls) == 5 and {e[0] for e in calls} == {".text", ".init.text", ".exit.text"}
    stubs_base, stubs = mem.sections[".stubs"]
    for target, offset, _, _, name in calls:
        place = mem.sections[target][0] + offset
        dest, size = stub_read(mem.read(place, 4), place) or (0, 0)
        assert stubs_base <= dest and dest + size <= stubs_base + len(stubs)
        assert int.from_bytes(mem.read(dest + 32, 8), "little") == mem.symbols[name]


@pytest.mark.parametrize("module", CAPTURED)
def test_a_changed_byte_is_found(module: str) -> None:
    mem = Loaded(module)
    entry = klp_entries(MEMORY / f"{module}.klp.ko")[0]
    base, data = mem.sections[entry[0]]
    changed = bytearray(data)
    changed[entry[1]] ^= 0x10
    mem.sections[entry[0]] = (base, bytes(changed))
    assert check_loaded(mem, entry) is not None


def test_stubs_size_and_toc_pointer() -> None:
    assert stubs_size(0) == 2 * STUB_SIZE  # the ftrace_caller and ftrace_regs_caller stubs
    assert stubs_size(19) == 840  # klp_address_taken's captured .stubs
    # out-of-line ftrace stubs (24 bytes each), rounded up to whole stub entries
    assert stubs_size(1, 5) == (1 + 2 + 3) * STUB_SIZE
    assert my_r2(0xC00800000003D600) == 0xC008000000045600
    assert my_r2(0xC00800000003D6FF) == 0xC008000000045600  # & ~0xff


def test_problem_takes_the_stub_from_the_stubs_read() -> None:
    stubs = Plt(STUBS, bytes(40) + stub(STUBS + 40, SYMBOL))
    raw = bl(PLACE, STUBS + 40)
    assert problem(REL24, 0, raw, PLACE, SYMBOL, stubs, TOC_PTR) is None
    assert "not a module stub" in (
        problem(REL24, 0, bl(PLACE, STUBS), PLACE, SYMBOL, stubs, None) or ""
    )
    # a branch outside the bytes read: the stub was not read
    far = bl(PLACE, STUBS + 400)
    assert "was not read" in (problem(REL24, 0, far, PLACE, SYMBOL, stubs, None) or "")
    assert meaning(REL24, 0, raw, PLACE, stubs) == (
        f"memory branches to a stub at {STUBS + 40:#x} that jumps to {SYMBOL:#x}"
    )
    assert meaning(REL24, 0, far, PLACE, stubs) == f"memory branches to {STUBS + 400:#x}"
    assert meaning(ADDR64, 8, (SYMBOL + 8).to_bytes(8, "little"), PLACE, stubs) == (
        f"memory points at {SYMBOL:#x}"
    )
    rel = (SYMBOL - PLACE) & ((1 << 64) - 1)
    assert meaning(REL64, 0, rel.to_bytes(8, "little"), PLACE, stubs).endswith(f"{SYMBOL:#x}")
    assert meaning(TOC16_HA, 0, b"\x01\x02", PLACE, stubs) == "memory holds 0102"
