"""The checks a verdict is made of, on logs and kallsyms captured from a real Debian 6.1 boot
(tests/data/consoles); the verdict itself is tested on whole transcripts in test_judge.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import SymbolFileError
from harness.suite import assertions
from harness.suite.assertions import (
    check_addresses,
    check_expected,
    check_splats,
    check_taint,
    parse_kallsyms,
    parse_resolved,
)
from harness.vm import dmesg

DATA = Path(__file__).parent / "data" / "consoles"
GOOD, OE, DWOE = 0, 12288, 12928  # /proc/sys/kernel/tainted around the two insmods


@pytest.fixture(scope="module")
def kallsyms() -> assertions.KallsymsIndex:
    return parse_kallsyms((DATA / "kallsyms.excerpt").read_text())


def lines(name: str) -> list[str]:
    return [dmesg.strip_prefix(line) for line in (DATA / name).read_text().splitlines()]


def address_of(index: assertions.KallsymsIndex, name: str, nth: int = 1) -> int:
    return index.vmlinux[name][nth - 1].address


def addresses(
    log: list[str], index: assertions.KallsymsIndex
) -> tuple[list[assertions.AddressCheck], list[assertions.Finding]]:
    return check_addresses(parse_resolved(log), index)


def test_parse_kallsyms_splits_vmlinux_and_modules(kallsyms: assertions.KallsymsIndex) -> None:
    assert kallsyms.count == 50
    assert address_of(kallsyms, "vfree") == 0xFFFFFFFFA88F0400
    assert len(kallsyms.vmlinux["jhash"]) == 17
    assert "goodmod_exit" in kallsyms.modules and "goodmod_exit" not in kallsyms.vmlinux
    assert kallsyms.modules["goodmod_exit"][0].module == "goodmod"
    # File order is kept: sympos order.
    p4d = [e.address for e in kallsyms.vmlinux["p4d_offset"]]
    assert p4d == sorted(p4d)


def test_parse_kallsyms_rejects_garbage_with_the_one_parser() -> None:
    with pytest.raises(SymbolFileError, match=r"^guest:2: not a System.map/kallsyms line"):
        parse_kallsyms("ffffffff81000000 T _text\nnot kallsyms\n", "guest")


def test_good_module_address_matches(kallsyms: assertions.KallsymsIndex) -> None:
    log = lines("goodmod.dmesg")
    checks, findings = addresses(log, kallsyms)
    assert findings == []
    assert [c.ok for c in checks] == [True]
    assert checks[0].entry is not None
    assert checks[0].entry.raw == "ffffffffa88f0400 T vfree"
    assert check_expected(log, [r"resolved vfree,0 "]) == []
    assert check_splats(log) == [] and check_taint(GOOD, OE) == []


def test_oops_module_findings(kallsyms: assertions.KallsymsIndex) -> None:
    log = lines("oopsmod.dmesg")
    _, (address,) = addresses(log, kallsyms)
    assert address.kind == "address"
    assert "kernel_clone,0: module saw 0x1234, kallsyms has 0xffffffffa86a0a60" in address.message
    assert address.evidence[:2] == (
        "klp-harness: resolved kernel_clone,0 0x1234",
        "ffffffffa86a0a60 T kernel_clone",
    )
    splats = check_splats(log)
    assert [f.message.split(":")[0] for f in splats] == ["WARNING", "BUG", "Oops"]
    assert splats[0].evidence[0].startswith("WARNING: CPU: 1 PID: 134 at ")
    assert len(splats[0].evidence) == 1 + assertions.SPLAT_CONTEXT
    (taint,) = check_taint(OE, DWOE)
    assert taint.kind == "taint" and taint.message.startswith("new taint DW (DIE, WARN)")
    assert check_taint(OE, DWOE, allowed="OEDW") == []


def resolved(name: str, pos: int, address: int) -> list[str]:
    return [f"klp-harness: resolved {name},{pos} {address:#x}"]


@pytest.mark.parametrize("nth", [1, 2])
def test_sympos_selects_nth_vmlinux_symbol(kallsyms: assertions.KallsymsIndex, nth: int) -> None:
    address = address_of(kallsyms, "__pte", nth)
    checks, findings = addresses(resolved("__pte", nth, address), kallsyms)
    assert findings == [] and checks[0].ok
    other = address_of(kallsyms, "__pte", 3 - nth)
    _, wrong = addresses(resolved("__pte", nth, other), kallsyms)
    assert [f.kind for f in wrong] == ["address"]
    assert f"at {other:#x}: " in wrong[0].evidence[-1]


@pytest.mark.parametrize(
    ("name", "pos", "message"),
    [
        ("__pte", 0, "'__pte' has 2 vmlinux symbols, so sympos 0 is ambiguous"),
        ("__pte", 3, "'__pte' has 2 vmlinux symbol(s), no sympos 3"),
        ("no_such_symbol", 0, "'no_such_symbol' is not a vmlinux symbol"),
        ("goodmod_exit", 0, "(only in modules)"),
    ],
)
def test_symbol_selection_failures(
    kallsyms: assertions.KallsymsIndex, name: str, pos: int, message: str
) -> None:
    _, findings = addresses(resolved(name, pos, 0xFFFFFFFF81000000), kallsyms)
    assert [f.kind for f in findings] == ["symbol"]
    assert message in findings[0].message


def test_zero_address_names_the_unapplied_relocation(
    kallsyms: assertions.KallsymsIndex,
) -> None:
    _, findings = addresses(resolved("kernel_clone", 0, 0), kallsyms)
    assert "module saw 0x0 (zero: the klp relocation was not applied)" in str(findings[0])


def test_expected_lines() -> None:
    log = lines("goodmod.dmesg")
    findings = check_expected(log, [r"tainting kernel$", r"unresolvable ambiguity"])
    assert [(f.kind, f.message) for f in findings] == [
        ("missing", "no dmesg line matches /unresolvable ambiguity/")
    ]


def test_taint_check_only_counts_new_flags() -> None:
    assert check_taint(DWOE, DWOE) == []
    assert check_taint(0, OE) == []
    (finding,) = check_taint(0, 1 << 15)
    assert finding.message == "new taint K (LIVEPATCH); before none, after K"
    assert check_taint(0, 1 << 15, allowed="OEK") == []
