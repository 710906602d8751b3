"""harness.suite.memcheck on real Debian modules converted and loaded in a guest (recorded,
tests/data/memcheck/debian-modules/): per-cpu symbols and the tables the kernel rewrites at
load are classified, not reported as mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.suite import memcheck
from harness.suite.assertions import KallsymsIndex, parse_kallsyms
from harness.suite.memcheck import MemoryRecord, verify

DATA = Path(__file__).parent / "data" / "memcheck" / "debian-modules"
# module: (klp relocations, verified, in freed init sections, patched by the kernel)
COUNTS = {
    "dummy": (57, 24, 14, 19),
    "brd": (131, 96, 7, 28),
    "tcp_vegas": (28, 10, 3, 15),
}


def load(module: str) -> tuple[MemoryRecord, KallsymsIndex]:
    record = MemoryRecord.from_json(json.loads((DATA / f"{module}.json").read_text()))
    text = (DATA / f"{module}.kallsyms").read_text()
    return record, parse_kallsyms(text, f"{module}.kallsyms")


@pytest.mark.parametrize("module", sorted(COUNTS))
def test_every_relocation_of_a_real_module_is_accounted_for(module: str) -> None:
    record, kallsyms = load(module)
    result = verify(record, kallsyms)
    assert result.ok, result.mismatches
    assert (result.total, result.verified, result.init, result.patched) == COUNTS[module]


def test_per_cpu_symbols_are_not_moved_by_kaslr() -> None:
    record, kallsyms = load("dummy")
    per_cpu = [r for r in record.relocs if r.name in ("this_cpu_off", "current_task")]
    assert per_cpu
    text = dict(record.predicted)
    assert record.table_text is not None
    assert all((text[r.symbol] or 0) < record.table_text for r in per_cpu)
    assert verify(record, kallsyms).ok


@pytest.mark.parametrize(
    ("module", "table"), [("dummy", ".static_call_sites"), ("brd", "__jump_table")]
)
def test_a_table_the_kernel_rewrites_at_load_counts_as_patched(
    module: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, kallsyms = load(module)
    assert any(r.section == table for r in record.relocs)
    monkeypatch.setattr(memcheck, "REWRITTEN_TABLES", ())
    result = verify(record, kallsyms)
    # Without the rule, exactly the fields inside those tables stop matching kallsyms.
    assert any(f".{table}+" in m for m in result.mismatches)
    assert all(
        any(f".{t}+" in m for t in (".static_call_sites", "__jump_table"))
        for m in result.mismatches
    )
