"""The in-memory check of klp relocations on AArch64, on bytes read from real arm64 guests
(tests/data/aarch64/memory, README there): harness.vm.kcore's reads are replayed as the guest
answered them, and every persistent klp relocation of the samples verifies against the arm64
loader's encoding, with CALL26 landing on the symbol directly (no KASLR, module within
128 MiB) or on a module PLT entry that leads to it (KASLR, 2G module region). A corrupted
byte, a wrong symbol, a PLT entry leading elsewhere each fail with a precise reason. No VM."""

from __future__ import annotations

import json
import lzma
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from harness.klp.elfread import ElfImage
from harness.klp.machines import AARCH64
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.fields_aarch64 import Plt, branch_target, plt_target
from harness.suite.memcheck import (
    KlpReloc,
    MemoryRecord,
    PatchSite,
    module_relocs,
    reads,
    record_of,
    verify,
)
from harness.vm.commands import CommandResult
from harness.vm.kcore import KcoreReader, parse_segments

MEMORY = Path(__file__).parent / "data" / "aarch64" / "memory"
BOOTS = ("nokaslr", "kaslr")
# per sample: verified, total, in freed init sections (the same .ko sources on both kernels)
COUNTS = {
    "klp_kernel_clone": (1, 3, 2),
    "klp_kallsyms_lookup_name": (1, 5, 4),
    "klp_unexported_data": (11, 19, 8),
    "klp_address_taken": (21, 25, 4),
    "klp_livepatch": (4, 6, 2),
    "klp_relocs_a64": (17, 17, 0),  # tests/data/aarch64/memory/klp_relocs_a64: more types
}
CALL26, JUMP26 = 283, 282
MIB128 = 128 << 20


@cache
def capture(boot: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        lzma.decompress((MEMORY / boot / "capture.json.xz").read_bytes())
    )
    return data


def kallsyms(boot: str) -> KallsymsIndex:
    return parse_kallsyms((MEMORY / boot / "kallsyms.excerpt").read_text(), f"{boot} kallsyms")


class Replay:
    """The guest as it answered kcore.py's commands during the capture, in order."""

    def __init__(self, boot: str) -> None:
        self.runs = [tuple(r) for r in capture(boot)["runs"]]
        self.files = capture(boot)["files"]
        self.scripts: list[str] = []

    def run(self, cmd: str, timeout: float = 60, note: str | None = None) -> CommandResult:
        recorded, output, status = self.runs.pop(0)
        # the same module and reads as in the capture (its files are served by name)
        assert cmd.splitlines()[:3] == recorded.splitlines()[:3]
        self.scripts.append(cmd)
        return CommandResult(cmd, output, status, 0.0)

    def read_file(self, name: str, limit: int = 16 << 20) -> bytes:
        return bytes.fromhex(self.files[name])[:limit]


@cache
def records(boot: str) -> dict[str, MemoryRecord]:
    """Each sample's record, made as harness.suite.steps makes it: module_relocs of the
    .ko, harness.vm.kcore reading `reads()` (replayed), record_of."""
    guest = Replay(boot)
    reader = KcoreReader(guest)
    out = {}
    for entry in capture(boot)["modules"]:
        if "objects" not in entry:  # the livepatch target: plain, loaded for klp_livepatch
            continue
        assert entry["insmod"][0] == 0
        found = module_relocs(ko(boot, entry["ko"]))
        read = reader.read(entry["module"], reads(found), entry["objects"])
        predicted = tuple((name, address) for name, address in entry["predicted"])
        out[entry["module"]] = record_of(
            found, read.bases, read.fields, read.error, predicted, entry["table_text"], read.symbols
        )
    assert guest.runs == []
    return out


def ko(boot: str, name: str) -> ElfImage:
    return ElfImage(Path(name), lzma.decompress((MEMORY / boot / f"{name}.xz").read_bytes()))


def reloc(record: MemoryRecord, name: str, rtype: int) -> tuple[int, KlpReloc]:
    return next((i, r) for i, r in enumerate(record.relocs) if r.name == name and r.type == rtype)


def flip(record: MemoryRecord, index: int, byte: int, mask: int = 0x01) -> MemoryRecord:
    raw = bytearray(bytes.fromhex(record.fields[index]))
    raw[byte] ^= mask
    fields = list(record.fields)
    fields[index] = raw.hex()
    return replace(record, fields=tuple(fields))


@pytest.mark.parametrize("boot", BOOTS)
@pytest.mark.parametrize("module", sorted(COUNTS))
def test_every_persistent_klp_relocation_verifies(boot: str, module: str) -> None:
    record = records(boot)[module]
    assert record.machine == AARCH64.label and record.error == ""
    result = verify(record, kallsyms(boot))
    assert result.ok, result.mismatches
    verified, total, init = COUNTS[module]
    assert (result.verified, result.total, result.init, result.patched) == (
        verified,
        total,
        init,
        0,
    )
    assert result.summary == (
        f"{verified} of {total} klp relocations verified in memory "
        f"({init} in freed init sections, 0 patched by the kernel)"
    )


def test_the_relocation_types_checked_are_the_samples_arm64_ones() -> None:
    types = {AARCH64.reloc_name(r.type) for rec in records("kaslr").values() for r in rec.relocs}
    assert types == {
        "R_AARCH64_CALL26",
        "R_AARCH64_JUMP26",
        "R_AARCH64_ADR_PREL_PG_HI21",
        "R_AARCH64_ADD_ABS_LO12_NC",
        "R_AARCH64_LDST8_ABS_LO12_NC",
        "R_AARCH64_LDST16_ABS_LO12_NC",
        "R_AARCH64_LDST32_ABS_LO12_NC",
        "R_AARCH64_LDST64_ABS_LO12_NC",
        "R_AARCH64_LDST128_ABS_LO12_NC",
        "R_AARCH64_ABS64",
        "R_AARCH64_PREL64",
        "R_AARCH64_PREL32",
        "R_AARCH64_MOVW_UABS_G0_NC",
        "R_AARCH64_MOVW_UABS_G1_NC",
        "R_AARCH64_MOVW_UABS_G2_NC",
        "R_AARCH64_MOVW_UABS_G3",
        "R_AARCH64_MOVW_SABS_G2",
        "R_AARCH64_MOVW_PREL_G1",
        "R_AARCH64_MOVW_PREL_G0_NC",
    }


@pytest.mark.parametrize(("boot", "via_plt"), [("nokaslr", False), ("kaslr", True)])
def test_kernel_clone_call26_lands_directly_or_through_the_module_plt(
    boot: str, via_plt: bool
) -> None:
    record = records(boot)["klp_kernel_clone"]
    bases = dict(record.bases)
    index, call = reloc(record, "kernel_clone", CALL26)
    place = bases[".text"] + call.offset
    word = int.from_bytes(bytes.fromhex(record.fields[index]), "little")
    dest = branch_target(word, place)
    (symbol,) = kallsyms(boot).vmlinux["kernel_clone"]
    (text,) = kallsyms(boot).vmlinux["_text"]
    far = abs(text.address - bases[".text"])
    plt = Plt(bases[".plt"], bytes.fromhex(record.plt))
    if via_plt:
        assert far > MIB128  # out of a branch's reach: the loader made a PLT entry
        assert bases[".plt"] <= dest < bases[".plt"] + len(plt.data)
        assert plt_target(plt, dest) == symbol.address
    else:
        assert far < MIB128 and dest == symbol.address


def test_on_kaslr_every_branch_to_vmlinux_went_through_a_plt() -> None:
    seen = 0
    for record in records("kaslr").values():
        bases = dict(record.bases)
        for index, r in enumerate(record.relocs):
            if r.type not in (CALL26, JUMP26) or not record.fields[index]:
                continue
            word = int.from_bytes(bytes.fromhex(record.fields[index]), "little")
            dest = branch_target(word, bases[r.section] + r.offset)
            plt = Plt(bases[".plt"], bytes.fromhex(record.plt))
            assert plt_target(plt, dest) == kallsyms("kaslr").vmlinux[r.name][0].address
            seen += 1
    assert seen == 6  # CALL26 x5 (4 samples), JUMP26 (klp_relocs_a64)


@pytest.mark.parametrize("boot", BOOTS)
def test_a_corrupted_branch_byte_is_a_mismatch(boot: str) -> None:
    record = records(boot)["klp_kernel_clone"]
    index, _ = reloc(record, "kernel_clone", CALL26)
    result = verify(flip(record, index, 0), kallsyms(boot))
    (mismatch,) = result.mismatches
    assert mismatch.startswith(".klp.rela.vmlinux..text+0x8c at 0x")
    assert "(vmlinux.kernel_clone,0): memory branches to 0x" in mismatch
    assert mismatch.endswith(
        f"kallsyms has vmlinux.kernel_clone,0 at {_address(boot, 'kernel_clone')}"
    )


@pytest.mark.parametrize("boot", BOOTS)
def test_one_flipped_bit_in_any_field_is_a_mismatch(boot: str) -> None:
    """Bit 10 lies in every instruction immediate (imm26, immhi, imm16, imm12); bit 0 in data."""
    record = records(boot)["klp_relocs_a64"]
    for index, r in enumerate(record.relocs):
        byte, mask = (0, 0x01) if r.width == 8 or r.type == 261 else (1, 0x04)
        result = verify(flip(record, index, byte, mask), kallsyms(boot))
        assert len(result.mismatches) == 1, AARCH64.reloc_name(r.type)
        assert result.mismatches[0].startswith(f"{r.label} at 0x")


def test_a_signed_movw_holds_a_movn_for_a_kernel_address() -> None:
    record = records("kaslr")["klp_relocs_a64"]
    index, _ = reloc(record, "saved_command_line", 272)
    word = int.from_bytes(bytes.fromhex(record.fields[index]), "little")
    assert (word >> 29) & 3 == 0  # MOVN: kernel addresses are negative
    (mismatch,) = verify(flip(record, index, 3, 0x40), kallsyms("kaslr")).mismatches
    assert "in bits 32-47" in mismatch  # the MOVZ the flip makes is not what the loader wrote


def test_a_corrupted_opcode_is_named() -> None:
    record = records("nokaslr")["klp_kernel_clone"]
    index, _ = reloc(record, "kernel_clone", CALL26)
    (mismatch,) = verify(flip(record, index, 3, 0x80), kallsyms("nokaslr")).mismatches
    assert "not a BL instruction" in mismatch


@pytest.mark.parametrize(
    ("rtype", "byte", "evidence"),
    [
        (275, 1, "memory points at page 0x"),  # ADRP's immhi
        (286, 2, "as the low 12 bits"),  # LDST64: imm12 at bits 10-21
    ],
)
def test_a_corrupted_data_reference_is_a_mismatch(rtype: int, byte: int, evidence: str) -> None:
    record = records("kaslr")["klp_unexported_data"]
    index, _ = reloc(record, "saved_command_line", rtype)
    result = verify(flip(record, index, byte), kallsyms("kaslr"))
    assert len(result.mismatches) == 1 and evidence in result.mismatches[0]
    assert result.verified == COUNTS["klp_unexported_data"][0] - 1


def test_a_corrupted_abs64_is_a_mismatch() -> None:
    record = records("kaslr")["klp_address_taken"]
    index, _ = reloc(record, "nr_running", 257)
    (mismatch,) = verify(flip(record, index, 0, 0x10), kallsyms("kaslr")).mismatches
    held = int(_address("kaslr", "nr_running"), 16) ^ 0x10
    assert f"memory points at {held:#x}, kallsyms has vmlinux.nr_running,0" in mismatch


@pytest.mark.parametrize("boot", BOOTS)
def test_a_wrong_symbol_is_a_mismatch(boot: str) -> None:
    """The record names nr_processes where the kernel wrote kernel_clone's call."""
    record = records(boot)["klp_kernel_clone"]
    wrong = tuple(
        replace(r, name="nr_processes") if r.name == "kernel_clone" else r for r in record.relocs
    )
    result = verify(replace(record, relocs=wrong), kallsyms(boot))
    assert result.verified == 0
    assert (
        f"kallsyms has vmlinux.nr_processes,0 at {_address(boot, 'nr_processes')}"
        in (result.mismatches[0])
    )


def test_a_plt_entry_pointing_elsewhere_is_a_mismatch() -> None:
    record = records("kaslr")["klp_kernel_clone"]
    bases = dict(record.bases)
    index, call = reloc(record, "kernel_clone", CALL26)
    word = int.from_bytes(bytes.fromhex(record.fields[index]), "little")
    entry = branch_target(word, bases[".text"] + call.offset) - bases[".plt"]
    plt = bytearray(bytes.fromhex(record.plt))
    plt[entry + 5] ^= 0x04  # the add's imm12 (bits 10-21): +0x10 or -0x10
    result = verify(replace(record, plt=plt.hex()), kallsyms("kaslr"))
    (mismatch,) = result.mismatches
    assert ", a PLT entry that jumps to 0x" in mismatch
    assert mismatch.endswith(
        f"kallsyms has vmlinux.kernel_clone,0 at {_address('kaslr', 'kernel_clone')}"
    )
    unread = verify(replace(record, plt=""), kallsyms("kaslr")).mismatches
    assert "and the module's .plt was not read" in unread[0]


def test_arm64_sites_the_kernel_patches_are_found_and_excused() -> None:
    found = module_relocs(ko("kaslr", "klp_kernel_clone.klp.ko"))
    lengths = {(s.table, s.length) for s in found.sites}
    assert lengths == {("__patchable_function_entries", 8), ("__jump_table", 4)}
    record = records("kaslr")["klp_kernel_clone"]
    index, call = reloc(record, "kernel_clone", CALL26)
    site = PatchSite("__jump_table", ".text", call.offset, 4)
    result = verify(replace(flip(record, index, 0), sites=(site,)), kallsyms("kaslr"))
    assert result.ok and result.patched == 1


def test_the_plt_read_is_sized_by_the_loader_count() -> None:
    found = module_relocs(ko("kaslr", "klp_kernel_clone.klp.ko"))
    assert reads(found)[-1] == (".plt", 0, found.plt_size)
    assert found.plt_size % 12 == 0 and found.plt_size >= 2 * 12


@pytest.mark.parametrize("boot", BOOTS)
def test_the_arm64_kcore_header_maps_the_module_region(boot: str) -> None:
    segments = parse_segments(bytes.fromhex(capture(boot)["files"]["kcore.head.1"]))
    text = dict(records(boot)["klp_kernel_clone"].bases)[".text"]
    assert any(s.vaddr <= text < s.vaddr + s.size for s in segments)


def test_an_arm64_record_round_trips_and_old_records_stay_x86() -> None:
    record = records("kaslr")["klp_kernel_clone"]
    data = json.loads(json.dumps(record.to_json()))
    assert data["machine"] == "AArch64" and data["plt"] == record.plt
    assert MemoryRecord.from_json(data) == record
    old = {k: v for k, v in data.items() if k not in ("machine", "plt")}
    assert MemoryRecord.from_json(old).machine == "x86-64"
    assert "machine" not in MemoryRecord().to_json()
    with pytest.raises(ValueError, match="machine 'sparc'"):
        MemoryRecord.from_json({**data, "machine": "sparc"})


def _address(boot: str, name: str) -> str:
    (entry,) = kallsyms(boot).vmlinux[name]
    return f"{entry.address:#x}"


def test_the_conversions_intent_is_checked_across_kaslr() -> None:
    """The build's prediction (System.map, before KASLR) moved by the guest's offset must be
    the symbol memory points at: a prediction of another address fails."""
    record = records("kaslr")["klp_kernel_clone"]
    assert record.table_text is not None and dict(record.predicted)["vmlinux.kernel_clone,0"]
    (text,) = kallsyms("kaslr").vmlinux["_text"]
    assert text.address != record.table_text  # a real KASLR shift
    meant = dict(record.predicted)["vmlinux.kernel_clone,0"]
    assert meant is not None
    wrong = (("vmlinux.kernel_clone,0", meant + 0x40),)
    (mismatch,) = verify(replace(record, predicted=wrong), kallsyms("kaslr")).mismatches
    shifted = meant + 0x40 + text.address - record.table_text
    assert mismatch == (
        f".klp.rela.vmlinux..text+0x8c (vmlinux.kernel_clone,0): memory points at "
        f"{_address('kaslr', 'kernel_clone')}, the conversion meant {shifted:#x}"
    )
