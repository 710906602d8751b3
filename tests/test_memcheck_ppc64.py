"""The in-memory check of klp relocations on ppc64le, on bytes read from a real guest
(tests/data/ppc64le/memory, README there: a 7.3 ppc64le kernel under QEMU pseries): the reads
harness.suite.memcheck asks for are served from the captured sections, and every klp
relocation verifies against powerpc's loader (calls through the module's .stubs with the TOC
restore after them, .toc and .data pointers). A changed stub, a lost TOC restore, a wrong
symbol each fail naming the relocation. No VM."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from harness.klp.elfread import ElfImage
from harness.klp.machines import PPC64, X86_64
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.fields_ppc64 import LD_TOC, NOP, REL24, STUB_SIZE, my_r2, stubs_size
from harness.suite.memcheck import (
    MemoryRecord,
    ModuleRelocs,
    module_relocs,
    reads,
    record_of,
    verify,
)
from harness.suite.transcript import load_transcript

MEMORY = Path(__file__).parent / "data" / "ppc64le" / "memory"
# per sample: klp relocations (all verified: ppc64 keeps .init.text, so none are unread)
COUNTS = {
    "klp_address_taken": 15,
    "klp_kallsyms_lookup_name": 4,
    "klp_kernel_clone": 2,
    "klp_unexported_data": 2,
}
AS = "powerpc64le-linux-gnu-as"
# transcripts/: a `klp-harness run --kernel source:7.3:livepatch:ppc64le` of 4 samples (all
# pass), memory read by harness.vm.kcore; kallsyms.excerpt: their symbols from System.map
# (RELOCATABLE, no KASLR: the guest's kallsyms holds the same addresses)
LIVE = {"unexported_data": 2, "kallsyms_lookup_name": 4, "address_taken": 15, "livepatch": 2}


@cache
def capture(sample: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MEMORY / f"{sample}.json").read_text())
    return data


def found_in(sample: str) -> ModuleRelocs:
    return module_relocs(ElfImage.load(MEMORY / f"{sample}.klp.ko"))


def sections(sample: str) -> dict[str, tuple[int, bytes]]:
    return {
        name: (int(s["address"], 16), bytes.fromhex(s["bytes"]))
        for name, s in capture(sample)["sections"].items()
    }


def kallsyms(sample: str, **moved: int) -> KallsymsIndex:
    symbols = {n: int(a, 16) for n, a in capture(sample)["symbols"].items()} | moved
    text = "".join(f"{a:016x} T {n}\n" for n, a in symbols.items())
    return parse_kallsyms(text, f"{sample} symbols")


def record(sample: str, memory: dict[str, tuple[int, bytes]] | None = None) -> MemoryRecord:
    """What steps.py records: the reads answered as the guest's memory held them."""
    memory = memory or sections(sample)
    found = found_in(sample)
    values = [memory[s][1][o : o + w] for s, o, w in reads(found)]
    bases = {name: address for name, (address, _) in memory.items()}
    return record_of(found, bases, values, "", (), None)


@pytest.mark.parametrize("sample", sorted(COUNTS))
def test_every_klp_relocation_verifies_in_real_memory(sample: str) -> None:
    verdict = verify(record(sample), kallsyms(sample))
    total = COUNTS[sample]
    assert verdict.ok, verdict.mismatches
    assert (verdict.total, verdict.verified, verdict.init, verdict.patched) == (total, total, 0, 0)
    assert verdict.summary.startswith(f"{total} of {total} klp relocations verified in memory")


@pytest.mark.parametrize("sample", sorted(COUNTS))
def test_reads_cover_calls_stubs_and_the_toc(sample: str) -> None:
    found = found_in(sample)
    asked = reads(found)
    # the .stubs the loader allocated (get_stubs_size), as long as the captured section
    assert found.stubs_size == len(sections(sample)[".stubs"][1])
    assert asked[-2:] == [(".stubs", 0, found.stubs_size), (".toc", 0, 8)]
    calls = [r for r in found.relocs if r.type == REL24]
    assert [w for s, o, w in asked if (s, o) in {(r.section, r.offset) for r in calls}] == [
        8
    ] * len(calls)  # the bl and the ld r2,24(r1) after it
    # ppc64 never frees .init.*: those fields are read like the others
    assert all((r.section, r.offset) in {(s, o) for s, o, _ in asked} for r in found.relocs)


def test_stub_count_is_get_stubs_size() -> None:
    img = ElfImage.load(MEMORY / "klp_address_taken.klp.ko")
    distinct = 0
    for sec in img.sections:
        if sec.type == 4:  # SHT_RELA, klp sections included
            relas = img.relas(sec.index)
            pairs = zip(relas.types(), relas.symbols(), relas.addends(), strict=True)
            distinct += len({(s, a) for t, s, a in pairs if t == REL24})
    assert module_relocs(img).stubs_size == stubs_size(distinct) == (distinct + 2) * STUB_SIZE


def _patch(memory: dict[str, tuple[int, bytes]], address: int, new: bytes) -> None:
    for name, (base, data) in memory.items():
        if base <= address < base + len(data):
            at = address - base
            memory[name] = (base, data[:at] + new + data[at + len(new) :])
            return
    raise AssertionError(f"{address:#x} not captured")


def _first_call(sample: str) -> tuple[int, int]:
    """(place, stub address) of the sample's first klp call."""
    memory = sections(sample)
    reloc = next(r for r in found_in(sample).relocs if r.type == REL24)
    base, data = memory[reloc.section]
    word = int.from_bytes(data[reloc.offset : reloc.offset + 4], "little")
    offset = word & 0x03FFFFFC
    offset -= (offset & 0x02000000) << 1
    return base + reloc.offset, base + reloc.offset + offset


def test_a_stub_jumping_elsewhere_fails_naming_both_addresses() -> None:
    sample = "klp_kallsyms_lookup_name"
    memory = sections(sample)
    place, stub = _first_call(sample)
    _patch(memory, stub + 32, (0xC000000000100000).to_bytes(8, "little"))
    verdict = verify(record(sample, memory), kallsyms(sample))
    assert not verdict.ok
    assert f"at {place:#x} (vmlinux.kallsyms_lookup_name,0)" in verdict.mismatches[0]
    assert f"a stub at {stub:#x} that jumps to 0xc000000000100000" in verdict.mismatches[0]
    assert (
        "kallsyms has vmlinux.kallsyms_lookup_name,0 at 0xc00000000012717c"
        in (verdict.mismatches[0])
    )


def test_a_symbol_missing_from_the_guest_says_where_memory_goes() -> None:
    sample = "klp_kallsyms_lookup_name"
    _, stub = _first_call(sample)
    index = parse_kallsyms("c000000000000000 T _text\n")
    verdict = verify(record(sample), index)
    assert len(verdict.mismatches) == 4
    assert any(
        "no such entry in the guest's kallsyms; memory branches to a stub at "
        f"{stub:#x} that jumps to 0xc00000000012717c" in m
        for m in verdict.mismatches
    )
    assert any("memory points at 0xc00000000012717c" in m for m in verdict.mismatches)


def test_a_lost_toc_restore_fails() -> None:
    sample = "klp_kallsyms_lookup_name"
    memory = sections(sample)
    place, _ = _first_call(sample)
    _patch(memory, place + 4, NOP.to_bytes(4, "little"))
    verdict = verify(record(sample, memory), kallsyms(sample))
    assert f"{NOP:#010x}, not the TOC restore" in verdict.mismatches[0]
    assert LD_TOC == 0xE8410018


def test_a_symbol_elsewhere_in_the_guest_fails_every_use() -> None:
    sample = "klp_unexported_data"
    verdict = verify(record(sample), kallsyms(sample, dmesg_restrict=0xC0000000013BF988))
    assert len(verdict.mismatches) == 1
    assert "memory holds 0xc0000000013bf980" in verdict.mismatches[0]


def test_the_stubs_are_checked_against_the_toc_pointer_from_the_toc_base() -> None:
    sample = "klp_kallsyms_lookup_name"
    rec = record(sample)
    toc = dict(rec.bases)[".toc"]
    assert toc == 0xC008000000049600 and my_r2(toc) == 0xC008000000051600
    # a .toc base 64 KiB off: each stub's addis/addi no longer lands on the stub
    bases = [[n, a + 0x10000 if n == ".toc" else a] for n, a in rec.bases]
    moved = MemoryRecord.from_json(rec.to_json() | {"bases": bases})
    verdict = verify(moved, kallsyms(sample))
    assert verdict.verified == 1 and len(verdict.mismatches) == 3  # the .toc pointer still holds
    assert "loads its data from" in verdict.mismatches[0]


def test_record_json_round_trip_and_old_records() -> None:
    rec = record("klp_address_taken")
    data = rec.to_json()
    assert data["machine"] == PPC64.label and len(data["stubs"]) == 2 * 840
    assert MemoryRecord.from_json(json.loads(json.dumps(data))) == rec
    old = {k: v for k, v in data.items() if k not in ("machine", "plt", "stubs")}
    assert MemoryRecord.from_json(old).machine == X86_64.label  # pre-AArch64 records load
    assert "stubs" not in MemoryRecord(machine=X86_64.label).to_json()


def test_kernel_patched_sites_from_mcount_loc() -> None:
    found = found_in("klp_unexported_data")
    assert {s.table for s in found.sites} == {"__mcount_loc"}
    img = ElfImage.load(MEMORY / "klp_unexported_data.klp.ko")
    text = img.section_bytes(next(s.index for s in img.sections if s.name == ".text"))
    for site in found.sites:
        if site.section == ".text":  # each an mprofile `bl _mcount` (relocated to its stub)
            word = int.from_bytes(text[site.offset : site.offset + 4], "little")
            assert word & 0xFC000003 == 0x48000001 and site.length == 4


FIXUP = """\
    .text
    .globl f
f:  nop
1:  lwsync
    nop
2:  blr
    .section __ftr_fixup,"a"
    .align 3
3:  .8byte 0x100, 0
    .8byte 1b - 3b
    .8byte 2b - 3b
    .8byte 0, 0
    .section __spec_barrier_fixup,"a"
    .align 3
4:  .8byte 1b - 4b
"""


@pytest.mark.skipif(shutil.which(AS) is None, reason=f"{AS} not installed")
def test_feature_fixup_ranges_from_a_real_object(tmp_path: Path) -> None:
    """struct fixup_entry offsets are relative to the entry, not to the field: the assembler's
    REL64 addends carry the field's place in the entry, which the site must take off."""
    (tmp_path / "f.s").write_text(FIXUP)
    subprocess.run([AS, "-a64", "-mpower8", "-o", str(tmp_path / "f.o"), str(tmp_path / "f.s")],
                   check=True)  # fmt: skip
    found = module_relocs(ElfImage.load(tmp_path / "f.o"))
    sites = {(s.table, s.section, s.offset, s.length) for s in found.sites}
    assert sites == {("__ftr_fixup", ".text", 4, 8), ("__spec_barrier_fixup", ".text", 4, 4)}


@pytest.mark.parametrize("sample", sorted(LIVE))
def test_the_live_runs_records_verify(sample: str) -> None:
    """What the harness itself read from the guest (kcore.py: fields, .stubs, .toc base)."""
    memory = load_transcript(MEMORY / "transcripts" / f"{sample}.json").memory
    assert memory is not None and memory.machine == PPC64.label and memory.stubs
    index = parse_kallsyms((MEMORY / "transcripts" / "kallsyms.excerpt").read_text())
    verdict = verify(memory, index)
    total = LIVE[sample]
    assert verdict.summary == (
        f"{total} of {total} klp relocations verified in memory "
        "(0 in freed init sections, 0 patched by the kernel)"
    )
    assert {s.table for s in memory.sites} == {"__mcount_loc"}
    assert MemoryRecord.from_json(memory.to_json()) == memory
