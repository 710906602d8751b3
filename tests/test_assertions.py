"""Step verdicts on logs and kallsyms captured from a real Debian 6.1 boot (tests/data/consoles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import SymbolFileError
from harness.suite import assertions
from harness.suite.assertions import assess_step, parse_kallsyms

DATA = Path(__file__).parent / "data" / "consoles"
GOOD, OE, DWOE = 0, 12288, 12928  # /proc/sys/kernel/tainted around the two insmods


@pytest.fixture(scope="module")
def kallsyms() -> assertions.KallsymsIndex:
    return parse_kallsyms((DATA / "kallsyms.excerpt").read_text())


def lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def address_of(index: assertions.KallsymsIndex, name: str, nth: int = 1) -> int:
    return index.vmlinux[name][nth - 1].address


def test_parse_kallsyms_splits_vmlinux_and_modules(kallsyms: assertions.KallsymsIndex) -> None:
    assert kallsyms.count == 50
    assert address_of(kallsyms, "vfree") == 0xFFFFFFFFA88F0400
    assert len(kallsyms.vmlinux["jhash"]) == 17
    assert "goodmod_exit" in kallsyms.modules and "goodmod_exit" not in kallsyms.vmlinux
    assert kallsyms.modules["goodmod_exit"][0].module == "goodmod"
    # File order is kept: sympos order.
    p4d = [e.address for e in kallsyms.vmlinux["p4d_offset"]]
    assert p4d == sorted(p4d)


def test_parse_kallsyms_rejects_garbage() -> None:
    with pytest.raises(SymbolFileError, match=r"guest:2: not a kallsyms line"):
        parse_kallsyms("ffffffff81000000 T _text\nnot kallsyms\n", "guest")


def test_good_module_step_is_ok(kallsyms: assertions.KallsymsIndex) -> None:
    report = assess_step(
        lines("goodmod.dmesg"),
        kallsyms=kallsyms,
        expected=[r"resolved vfree,0 "],
        taint_before=GOOD,
        taint_after=OE,
        min_resolved=1,
    )
    assert report.ok, report.summary()
    assert [c.ok for c in report.checks] == [True]
    assert report.checks[0].entry is not None
    assert report.checks[0].entry.line == "ffffffffa88f0400 T vfree"
    assert report.summary() == "ok: 1/1 addresses match kallsyms"


def test_oops_module_step_findings(kallsyms: assertions.KallsymsIndex) -> None:
    report = assess_step(
        lines("oopsmod.dmesg"), kallsyms=kallsyms, taint_before=OE, taint_after=DWOE
    )
    kinds = [f.kind for f in report.findings]
    assert kinds == ["address", "splat", "splat", "splat", "taint"]
    address = report.findings[0]
    assert "kernel_clone,0: module saw 0x1234, kallsyms has 0xffffffffa86a0a60" in address.message
    assert address.evidence[:2] == (
        "klp-harness: resolved kernel_clone,0 0x1234",
        "ffffffffa86a0a60 T kernel_clone",
    )
    splats = [f.message.split(":")[0] for f in report.findings[1:4]]
    assert splats == ["WARNING", "BUG", "Oops"]
    assert report.findings[1].evidence[0].startswith("WARNING: CPU: 1 PID: 134 at ")
    assert len(report.findings[1].evidence) == 1 + assertions.SPLAT_CONTEXT
    assert report.findings[4].message.startswith("new taint DW (DIE, WARN)")
    assert not report.ok
    assert "5 finding(s), 0/1 addresses match kallsyms" in report.summary()


def test_allowed_splats_and_taints(kallsyms: assertions.KallsymsIndex) -> None:
    report = assess_step(
        lines("oopsmod.dmesg"),
        taint_before=OE,
        taint_after=DWOE,
        allowed_splats={"WARNING", "BUG", "Oops"},
        allowed_taints="OEDW",
    )
    assert report.ok


def resolved(name: str, pos: int, address: int) -> list[str]:
    return [f"[    9.000000] klp-harness: resolved {name},{pos} {address:#x}"]


@pytest.mark.parametrize("nth", [1, 2])
def test_sympos_selects_nth_vmlinux_symbol(kallsyms: assertions.KallsymsIndex, nth: int) -> None:
    address = address_of(kallsyms, "__pte", nth)
    report = assess_step(resolved("__pte", nth, address), kallsyms=kallsyms)
    assert report.ok, report.summary()
    other = address_of(kallsyms, "__pte", 3 - nth)
    wrong = assess_step(resolved("__pte", nth, other), kallsyms=kallsyms)
    assert [f.kind for f in wrong.findings] == ["address"]
    assert f"at {other:#x}: " in wrong.findings[0].evidence[-1]


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
    report = assess_step(resolved(name, pos, 0xFFFFFFFF81000000), kallsyms=kallsyms)
    assert [f.kind for f in report.findings] == ["symbol"]
    assert message in report.findings[0].message


def test_zero_address_names_the_unapplied_relocation(
    kallsyms: assertions.KallsymsIndex,
) -> None:
    report = assess_step(resolved("kernel_clone", 0, 0), kallsyms=kallsyms)
    assert "module saw 0x0 (zero: the klp relocation was not applied)" in str(report.findings[0])


def test_expected_forbidden_and_minimum() -> None:
    log = lines("goodmod.dmesg")
    report = assess_step(
        log,
        expected=[r"tainting kernel$", r"unresolvable ambiguity"],
        forbidden=[r"module verification failed"],
        min_resolved=2,
    )
    assert [f.kind for f in report.findings] == ["missing", "forbidden", "missing"]
    assert report.findings[0].message == "no dmesg line matches /unresolvable ambiguity/"
    assert report.findings[1].evidence == (log[1],)
    assert report.findings[2].message == "1 resolved-address line(s), want 2"


def test_kallsyms_text_is_accepted_and_prefixes_stripped() -> None:
    text = (DATA / "kallsyms.excerpt").read_text()
    report = assess_step(
        ["[    7.1] klp-harness: resolved vfree,0 0xffffffffa88f0400"], kallsyms=text
    )
    assert report.ok
    assert report.lines == ("klp-harness: resolved vfree,0 0xffffffffa88f0400",)


def test_taint_check_only_counts_new_flags() -> None:
    assert assertions.check_taint(DWOE, DWOE) == []
    assert assertions.check_taint(0, OE) == []
    (finding,) = assertions.check_taint(0, 1 << 15)
    assert finding.message == "new taint K (LIVEPATCH); before none, after K"
    assert assertions.check_taint(0, 1 << 15, allowed="OEK") == []
