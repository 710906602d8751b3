"""The converter and the offline verdict on real AArch64 modules (tests/data/aarch64/, from
Debian's arm64 6.1 kernel; see the README there).

Every undefined symbol is treated as unexported and given a made-up vmlinux address, so every
relocation against one moves into `.klp.rela.vmlinux.<section>`; pyelftools and binutils'
readelf (which reads AArch64 relocations on any host) check what was written.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from machine_modules import Entry, cli_refusal, readelf, retyped
from machine_modules import convert as convert_at
from machine_modules import entries as entries_of
from machine_modules import symbol_map as symbol_map_at

from harness.errors import RelocationTypeError
from harness.klp.convert import convert_module, undefined_symbols
from harness.klp.guard import GUARD_SYMBOL
from harness.klp.inspect import format_table, inspect_module, verdicts
from harness.klp.machines import AARCH64, X86_64, machine_of
from harness.klp.symbols import SymbolTable

DATA = Path(__file__).parent / "data" / "aarch64"
SAMPLES = sorted(p.name for p in DATA.glob("*.ko"))
SHN_LIVEPATCH = 0xFF20
BASE = 0xFFFF800008010000  # where the made-up vmlinux table starts
CALL26, JUMP26, ADR_GOT_PAGE = 283, 282, 311


def symbol_map(ko: Path, skip: str = "") -> SymbolTable:
    return symbol_map_at(ko, BASE, skip)


def convert(src: Path, dst: Path) -> None:
    convert_at(src, dst, BASE)


def entries(path: Path) -> tuple[Counter[Entry], Counter[Entry], dict[str, int]]:
    return entries_of(path, "EM_AARCH64")


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_entry_moves_once_and_intact(sample: str, tmp_path: Path) -> None:
    src, dst = DATA / sample, tmp_path / sample
    convert(src, dst)
    before, _, _ = entries(src)
    after, moved, shndx = entries(dst)
    assert before and not after  # everything against an undefined symbol left its section
    assert moved == before  # offset, type and addend kept, each entry once
    assert shndx and set(shndx.values()) == {SHN_LIVEPATCH}
    types = {AARCH64.reloc_name(e[2]) for e in moved}
    assert "R_AARCH64_CALL26" in types and types <= AARCH64.accepted_names


@pytest.mark.parametrize("sample", SAMPLES)
def test_readelf_reads_the_klp_relocations(sample: str, tmp_path: Path) -> None:
    dst = tmp_path / sample
    convert(DATA / sample, dst)
    out = readelf(dst)
    assert "Relocation section '.klp.rela.vmlinux..text" in out
    klp_lines = [line for line in out.splitlines() if ".klp.sym.vmlinux." in line]
    assert any("R_AARCH64_CALL26" in line for line in klp_lines)
    assert any("R_AARCH64_ADR_PREL_PG_HI21" in line for line in klp_lines)
    # readelf shows unknown types as "unrecognized"; none here
    assert "unrecognized" not in out.lower()


def test_a_type_the_arm64_loader_refuses_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "got.ko"
    offset = retyped(DATA / "efibc.ko", src, CALL26, ADR_GOT_PAGE)
    with pytest.raises(RelocationTypeError) as err:
        convert(src, tmp_path / "out.ko")
    message = str(err.value)
    assert f"+{offset:#x}: R_AARCH64_ADR_GOT_PAGE against" in message
    assert message.endswith("is refused by the AArch64 module loader")
    assert "\n" not in message and not (tmp_path / "out.ko").exists()


def test_cli_refusal_is_one_line_with_the_exit_status(tmp_path: Path) -> None:
    src = tmp_path / "got.ko"
    retyped(DATA / "efibc.ko", src, CALL26, ADR_GOT_PAGE)
    assert "AArch64 module loader" in cli_refusal(src, tmp_path, 0xFFFF800008000000)


def test_jump26_moves_as_jump26(tmp_path: Path) -> None:
    src, dst = tmp_path / "jump.ko", tmp_path / "out.ko"
    offset = retyped(DATA / "efibc.ko", src, CALL26, JUMP26)
    convert(src, dst)
    _, moved, _ = entries(dst)
    assert any(e[1] == offset and e[2] == JUMP26 for e in moved)


def test_guard_on_aarch64(tmp_path: Path) -> None:
    src, dst = DATA / "uio_sercos3.ko", tmp_path / "out.ko"
    convert_module(
        src, dst, symtab=symbol_map(src), exports=set(), versions={GUARD_SYMBOL: 0x1234ABCD}
    )
    assert GUARD_SYMBOL in undefined_symbols(dst)
    readelf(dst)


def test_inspect_verdicts(tmp_path: Path) -> None:
    src, dst = DATA / "nhpoly1305-neon.ko", tmp_path / "out.ko"
    convert(src, dst)
    relocs = inspect_module(dst)
    assert relocs and all(r.type.startswith("R_AARCH64_") for r in relocs)
    judged = verdicts(relocs, symbol_map(src))
    assert judged and {v.status for v in judged} == {"resolves"}
    gone = relocs[0].name
    judged = verdicts(relocs, symbol_map(src, skip=gone))
    assert {v.name for v in judged if v.status == "not-found"} == {gone}
    rows = format_table(relocs, None).splitlines()
    col = rows[0].index("section")  # every section name starts under the header: aligned
    assert all(row[col - 1] == " " and row[col] == "." for row in rows[1:])


def test_inspect_bad_type_names_the_machine(tmp_path: Path) -> None:
    src, dst = DATA / "nhpoly1305-neon.ko", tmp_path / "out.ko"
    convert(src, dst)
    first = inspect_module(dst)[0]
    data = dict(first.__dict__, type="R_AARCH64_ADR_GOT_PAGE")
    (v,) = verdicts([type(first)(**data)], symbol_map(src))
    assert v.status == "bad-type" and v.message.endswith("refused by the AArch64 module loader")
    data = dict(first.__dict__, type="AArch64 type 1234")
    (v,) = verdicts([type(first)(**data)], symbol_map(src))
    assert v.status == "bad-type" and "AArch64" in v.message


def test_machine_tables() -> None:
    assert machine_of("R_X86_64_PC32") is X86_64 and machine_of("type 99") is X86_64
    assert machine_of("R_AARCH64_CALL26") is AARCH64 and machine_of("AArch64 type 9") is AARCH64
    assert X86_64.accepted_names.isdisjoint(AARCH64.accepted_names)
    assert AARCH64.loader[257] == 8 and AARCH64.loader[261] == 4 and AARCH64.loader[283] == 4


SOURCES = Path("/root/.cache/klp-harness/sources")


@pytest.mark.parametrize("version", ["6.1", "7.3"])
def test_loader_table_matches_the_kernel_source(version: str) -> None:
    """Every case label of arm64's apply_relocate_add() is in the table, and nothing else
    (checked when the harness has unpacked that linux-source; skipped otherwise)."""
    found = sorted(SOURCES.glob(f"linux-source-{version}_*/linux-source-{version}"))
    if not found:
        pytest.skip(f"linux-source-{version} is not unpacked in the harness cache")
    text = (found[-1] / "arch/arm64/kernel/module.c").read_text()
    body = text[text.index("int apply_relocate_add(") :]
    labels = set(re.findall(r"case (R_A[A-Z0-9_]+):", body[: body.index("default:")]))
    assert labels == {AARCH64.reloc_name(t) for t in AARCH64.loader}
