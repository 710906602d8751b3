"""The in-memory check of klp relocations as pure functions, on data captured from real boots
of Debian bookworm's default kernel (tests/data/transcripts/memcheck): the fields each step
read through /proc/kcore verify against the guest's kallsyms and the conversion's intent; a
klp symbol position edited after conversion, a changed field, a missing /proc/kcore each
fail the step with one precise reason. No VM."""

from __future__ import annotations

import lzma
import re
from dataclasses import replace
from pathlib import Path

import pytest
from transcript_data import DATA, kallsyms, transcripts

from harness.klp.elfread import ElfImage
from harness.suite.judge import judge
from harness.suite.memcheck import (
    NO_KCORE,
    KlpReloc,
    MemoryRecord,
    PatchSite,
    expected_field,
    module_relocs,
    verify,
)
from harness.suite.results import FAIL, PASS
from harness.suite.samples import Expectation
from harness.suite.transcript import Transcript, TranscriptError
from harness.vm.commands import CommandResult
from harness.vm.kcore import KcoreError, KcoreReader, Segment, file_offset, parse_segments

RUN, TAMPER = "memcheck/run", "memcheck/tamper"
MEMCHECK = DATA / "memcheck"
# What the run of every sample (klp-harness run, default kernel) read, per sample.
COUNTS = {
    "kernel_clone": (2, 4, 2),
    "livepatch": (2, 3, 1),
    "address_taken": (14, 17, 3),
    "unexported_data": (7, 13, 6),
}
LIVE_3, MEANT_2 = "0xffffffffb8620db0", "0xffffffffb8605090"  # init_once #3 and #2 that boot


def memory(name: str, boot: str) -> MemoryRecord:
    record = transcripts(boot)[name].memory
    assert record is not None
    return record


def passing() -> Expectation:
    return Expectation(outcome="pass", reason="")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_persistent_relocation_of_a_real_run_verifies(name: str) -> None:
    result = verify(memory(name, RUN), kallsyms(RUN))
    verified, total, init = COUNTS[name]
    assert result.ok, result.mismatches
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


def test_a_module_objects_symbol_is_resolved_from_what_was_read_while_loaded() -> None:
    record = memory("livepatch", RUN)
    assert any(r.obj == "klp_livepatch_target" for r in record.relocs)
    assert ("klp_livepatch_target", "klp_target_greeting") in {(o, n) for o, n, _ in record.symbols}
    assert verify(replace(record, symbols=()), kallsyms(RUN)).mismatches


def test_the_ko_gives_the_relocations_the_step_recorded() -> None:
    data = lzma.decompress((MEMCHECK / "tamper" / "klp_memcheck_ref.ko.xz").read_bytes())
    found = module_relocs(ElfImage(Path("klp_memcheck_ref.ko"), data))
    assert found.relocs == memory("init_once_ref", TAMPER).relocs
    assert {(r.section, r.type) for r in found.relocs} == {(".data", 1), (".text.unlikely", 11)}
    assert {s.table for s in found.sites} == {"__mcount_loc", ".return_sites"}


def test_the_untampered_module_verifies() -> None:
    result = verify(memory("init_once_ref", TAMPER), kallsyms(TAMPER))
    assert result.ok and result.summary.startswith("2 of 2 klp relocations verified")


def test_a_sympos_edited_after_conversion_fails_naming_relocation_and_both_addresses() -> None:
    """The real tampered module (.strtab `,2` -> `,3`) loaded; the kernel wrote init_once #3
    where the conversion meant #2."""
    tampered = transcripts(TAMPER)["tampered"]
    insmod = next(c for c in tampered.commands if c.role == "insmod")
    assert insmod.status == 0
    result = judge(tampered, passing(), kallsyms(TAMPER))
    assert result.outcome == FAIL
    assert (
        "klp relocation mismatch in memory: .klp.rela.vmlinux..text.unlikely+0x8 "
        f"(vmlinux.init_once,3): memory points at {LIVE_3}, the conversion meant "
        f"vmlinux.init_once,2 at {MEANT_2}"
    ) in result.reason
    assert f".klp.rela.vmlinux..data+0x0 (vmlinux.init_once,3): memory points at {LIVE_3}" in (
        result.reason
    )
    assert result.memory.startswith("0 of 2 klp relocations verified")


def test_the_same_edit_on_captured_data_fails_too() -> None:
    record = memory("init_once_ref", TAMPER)
    edited = replace(record, relocs=tuple(replace(r, sympos=3) for r in record.relocs))
    result = verify(edited, kallsyms(TAMPER))
    assert len(result.mismatches) == 2 and result.verified == 0
    # memory holds what the kernel wrote for ,2; the record now says ,3
    assert result.mismatches[0].endswith(
        f"(vmlinux.init_once,3): memory points at {MEANT_2}, "
        f"kallsyms has vmlinux.init_once,3 at {LIVE_3}"
    )


def test_a_changed_field_is_a_mismatch_with_both_addresses() -> None:
    record = memory("kernel_clone", RUN)
    index = next(i for i, f in enumerate(record.fields) if f)
    field = bytearray(bytes.fromhex(record.fields[index]))
    field[0] ^= 0x10
    fields = list(record.fields)
    fields[index] = field.hex()
    result = verify(replace(record, fields=tuple(fields)), kallsyms(RUN))
    (message,) = result.mismatches
    reloc = record.relocs[index]
    assert message.startswith(f"{reloc.label} at 0x")
    wrong, right = re.findall(r"0x[0-9a-f]{16}", message.split(": ", 1)[1])
    assert wrong != right
    assert f"kallsyms has {reloc.symbol} at {right}" in message


def test_a_changed_field_at_a_site_the_kernel_patches_counts_apart() -> None:
    record = memory("kernel_clone", RUN)
    index = next(i for i, f in enumerate(record.fields) if f)
    reloc = record.relocs[index]
    fields = list(record.fields)
    fields[index] = "00" * reloc.width  # e.g. a call the kernel turned into a NOP
    site = PatchSite("__mcount_loc", reloc.section, reloc.offset - 1, 5)
    result = verify(replace(record, fields=tuple(fields), sites=(site,)), kallsyms(RUN))
    assert (result.patched, result.verified, result.mismatches) == (1, 1, ())
    assert "1 patched by the kernel" in result.summary
    # a site whose bytes still hold the relocated value is verified, not "patched"
    assert verify(replace(record, sites=(site,)), kallsyms(RUN)).verified == 2


def test_no_kcore_fails_the_step_with_one_line() -> None:
    step = transcripts(RUN)["kernel_clone"]
    assert judge(step, passing(), kallsyms(RUN)).outcome == PASS
    without = replace(
        step, memory=MemoryRecord(error=NO_KCORE, relocs=memory("kernel_clone", RUN).relocs)
    )
    result = judge(without, passing(), kallsyms(RUN))
    assert result.outcome == FAIL
    assert result.reason == "cannot verify in memory: no /proc/kcore"
    assert result.memory == NO_KCORE


def test_a_step_without_a_memory_record_is_judged_as_before() -> None:
    step = replace(transcripts(RUN)["kernel_clone"], memory=None)
    result = judge(step, passing(), kallsyms(RUN))
    assert result.outcome == PASS and result.memory == ""


def test_memory_records_read_back_as_written() -> None:
    for name in COUNTS:
        step = transcripts(RUN)[name]
        assert Transcript.from_json(step.to_json()) == step


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(fields=["00"]),  # not one per relocation
        lambda m: m.update(fields=["zz", "", "", ""]),  # not hex
        lambda m: m["relocs"][0].__setitem__(2, "8"),  # offset not an integer
        lambda m: m.update(table_text=True),
        lambda m: m.pop("bases"),
    ],
)
def test_a_malformed_memory_record_is_one_error(change: object) -> None:
    data = transcripts(RUN)["kernel_clone"].to_json()
    assert callable(change)
    change(data["memory"])
    with pytest.raises(TranscriptError, match="malformed transcript"):
        Transcript.from_json(data)


def reloc(rtype: int, addend: int = 0) -> KlpReloc:
    return KlpReloc(".klp.rela.vmlinux..text", ".text", 0x10, rtype, addend, "vmlinux", "f", 0)


def test_the_loaders_formulas_at_each_width() -> None:
    symbol, place = 0xFFFFFFFF81000000, 0xFFFFFFFFC0001010
    assert expected_field(reloc(1, 8), symbol, place) == symbol + 8
    assert expected_field(reloc(24, -4), symbol, place) == (symbol - 4 - place) % (1 << 64)
    assert expected_field(reloc(2, -4), symbol, place) == (symbol - 4 - place) % (1 << 32)
    assert expected_field(reloc(4, -4), symbol, place) == (symbol - 4 - place) % (1 << 32)
    assert expected_field(reloc(11), symbol, place) == 0x81000000
    assert expected_field(reloc(10), 0x1234, place) == 0x1234


def test_kcore_program_headers_map_module_addresses() -> None:
    segments = parse_segments(lzma.decompress((MEMCHECK / "kcore.head.xz").read_bytes()))
    modules = next(s for s in segments if s.vaddr == 0xFFFFFFFFC0000000)
    assert file_offset(segments, modules.vaddr + 0x1000, 8) == modules.offset + 0x1000
    with pytest.raises(KcoreError, match="no PT_LOAD covers"):
        file_offset([Segment(0x1000, 0, 0x1000)], 0x1FFC, 8)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"", "not an ELF64"),
        (b"\x7fELF\x02\x01" + bytes(58), "program headers 0 x 0"),
    ],
)
def test_a_hostile_kcore_header_is_one_error(head: bytes, message: str) -> None:
    with pytest.raises(KcoreError, match=message):
        parse_segments(head)


def test_kcore_header_past_the_bytes_read() -> None:
    head = bytearray(lzma.decompress((MEMCHECK / "kcore.head.xz").read_bytes()))
    with pytest.raises(KcoreError, match="past the bytes read"):
        parse_segments(bytes(head[:100]))


class ScriptedGuest:
    """Answers kcore.py's two commands with given text and files (the host-side parsing;
    the real guest side is in tests/test_memcheck_vm.py and every VM run)."""

    def __init__(self, outputs: list[str], files: dict[str, bytes]) -> None:
        self.outputs, self.files = outputs, files
        self.scripts: list[str] = []

    def run(self, cmd: str, timeout: float = 60, note: str | None = None) -> CommandResult:
        self.scripts.append(cmd)
        return CommandResult(cmd, self.outputs.pop(0), 0, 0.0)

    def read_file(self, name: str, limit: int = 1 << 20) -> bytes:
        return self.files[name][:limit]


HEAD = lzma.decompress((MEMCHECK / "kcore.head.xz").read_bytes())
FIELD = [(".data", 8, 8)]


def test_kcore_reader_reads_a_field_from_the_mapped_page() -> None:
    page = bytes(range(256)) * 16
    guest = ScriptedGuest(
        [".data 0xffffffffc0482000\n.data 0xdeadbeef\nbogus line\n", ""],
        {"kcore.head.1": HEAD, "kcore.mem.1.0": page},
    )
    read = KcoreReader(guest).read("klp_x", FIELD)
    assert read.error == "" and read.bases == {".data": 0xFFFFFFFFC0482000}
    assert read.fields == (page[8:16],)
    assert "skip=" in guest.scripts[1] and "bs=4096" in guest.scripts[1]


@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        (["klp-harness:no-kcore\n"], "cannot verify in memory: no /proc/kcore"),
        (
            [".data 0xffffffffc0482000\nklp-harness:dd-failed\ndd: Operation not permitted\n"],
            "cannot verify in memory: reading /proc/kcore failed: dd: Operation not permitted",
        ),
        (
            [".data 0x0000000000001000\n"],
            "cannot verify in memory: /proc/kcore: no PT_LOAD covers 0x1000+0x1000",
        ),
    ],
)
def test_kcore_reader_turns_failures_into_one_line(outputs: list[str], error: str) -> None:
    guest = ScriptedGuest(outputs, {"kcore.head.1": HEAD})
    assert KcoreReader(guest).read("klp_x", FIELD).error == error


def test_a_short_memory_file_is_refused() -> None:
    guest = ScriptedGuest(
        [".data 0xffffffffc0482000\n", ""], {"kcore.head.1": HEAD, "kcore.mem.1.0": b"12"}
    )
    assert "2 bytes, expected 4096" in KcoreReader(guest).read("klp_x", FIELD).error


def test_after_the_first_module_one_command_reads_the_memory() -> None:
    page = bytes(range(256)) * 16
    guest = ScriptedGuest(
        [".data 0xffffffffc0482000\n", "", ".data 0xffffffffc0490ff8\n"],
        {"kcore.head.1": HEAD, "kcore.mem.1.0": page, "kcore.fast.2.0": page[8:] + page[:8]},
    )
    reader = KcoreReader(guest)
    assert reader.read("klp_x", FIELD).fields == (page[8:16],)
    # .data+8 at ...0491000: the shell's dd starts at that page
    second = reader.read("klp_y", FIELD)
    assert second.error == "" and second.fields == (page[8:16],)
    assert len(guest.scripts) == 3 and "kcore.fast.2.0" in guest.scripts[2]
    assert "0x100000000004000" in guest.scripts[2]  # the module PT_LOAD's shift, mod 2**64


def test_a_module_outside_the_assumed_range_is_read_the_first_way() -> None:
    page = bytes(range(256)) * 16
    elsewhere = 0xFF22121080001000  # another PT_LOAD of that kcore
    guest = ScriptedGuest(
        [
            ".data 0xffffffffc0482000\n",
            "",
            f".data {elsewhere:#x}\nklp-harness:dd-failed\ndd: bad skip\n",  # the shell's guess
            "",
        ],
        {"kcore.head.1": HEAD, "kcore.mem.1.0": page, "kcore.mem.2.0": page[::-1]},
    )
    reader = KcoreReader(guest)
    reader.read("klp_x", FIELD)
    second = reader.read("klp_y", FIELD)
    assert second.error == "" and second.fields == (page[::-1][8:16],)
    assert "kcore.mem.2.0" in guest.scripts[3]


def test_an_odd_object_name_never_reaches_the_shell() -> None:
    guest = ScriptedGuest([], {})
    read = KcoreReader(guest).read("klp_x", FIELD, ["a b;reboot"])
    assert read.error == "cannot verify in memory: module name 'a b;reboot'"
    assert guest.scripts == []
