"""dmesg/console parsing on logs captured from real Debian 6.1 boots (tests/data/consoles)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from harness.vm import dmesg

DATA = Path(__file__).parent / "data" / "consoles"


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[    1.234567] hello world", "hello world"),
        ("<6>[    0.000000] Linux version 6.1", "Linux version 6.1"),
        ("[12345.000001] x", "x"),
        ("plain line", "plain line"),
        ("[not a stamp] kept", "[not a stamp] kept"),
    ],
)
def test_strip_prefix(line: str, message: str) -> None:
    assert dmesg.strip_prefix(line) == message


def test_messages_drop_carriage_returns_and_escapes() -> None:
    text = "\x1b[?2004hroot# \r\r\n[    6.1] BUG: x\r\r\n\r\n"
    assert dmesg.messages(text) == ["root#", "BUG: x"]


def test_canary_is_one_word_label() -> None:
    line = dmesg.canary_line("mod insmod", "TOKEN-3")
    assert line == "klp-harness: canary mod_insmod TOKEN-3"
    assert dmesg.canary_line("it's $(x) ", "T") == "klp-harness: canary it_s_x_ T"


def test_lines_since_takes_last_exact_canary() -> None:
    text = (
        "[ 1.0] klp-harness: canary a T-1\n[ 1.1] old\n"
        "[ 2.0] klp-harness: canary a T-12\n[ 2.1] other\n"
        "[ 3.0] klp-harness: canary a T-1\n[ 3.1] new\n[ 3.2] newer\n"
    )
    assert dmesg.lines_since(text, "klp-harness: canary a T-1") == ["new", "newer"]
    assert dmesg.lines_since(text, "klp-harness: canary a T-12") == [
        "other",
        "klp-harness: canary a T-1",
        "new",
        "newer",
    ]
    assert dmesg.lines_since(text, "klp-harness: canary a T-2") is None


def test_normal_boot_has_no_splat_despite_loops_per_jiffy() -> None:
    lines = dmesg.messages(read("boot.dmesg"))
    assert len(lines) > 400
    assert any("loops_per_jiffy" in line for line in lines)
    assert dmesg.scan_splats(lines) == []


def test_oops_module_log_warning_bug_oops_once_each() -> None:
    lines = dmesg.messages(read("oopsmod.dmesg"))
    kinds = [s.kind for s in dmesg.scan_splats(lines)]
    # Their "Call Trace:" lines belong to the WARNING and the Oops, not listed again.
    assert kinds == ["WARNING", "BUG", "Oops"]


def test_panic_console_last_splat_is_the_panic() -> None:
    text = read("oops-then-panic.console.log")
    assert dmesg.last_splat(text) == "Kernel panic - not syncing: sysrq triggered crash"
    assert dmesg.last_splat(read("boot-commands.console.log")) is None


@pytest.mark.parametrize(
    "line",
    [
        "calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
        "oops: lowercase is not the kernel's word",
        "Oopsie",
        "DEBUG: something",
        "CONFIG_BUG: y",
        "NO-WARNING: fine",
        "printed a call trace: no",
    ],
)
def test_splat_words_are_case_sensitive_whole_words(line: str) -> None:
    assert dmesg.scan_splats([line]) == []


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("Oops: 0000 [#1] PREEMPT SMP NOPTI", "Oops"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000000", "BUG"),
        ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s!", "BUG"),
        ("kernel BUG at mm/slub.c:42!", "kernel BUG"),
        ("WARNING: CPU: 1 PID: 134 at x.c:7 f+0x22/0x1000 [m]", "WARNING"),
        (
            "general protection fault, probably for non-canonical address",
            "general protection fault",
        ),
        ("Kernel panic - not syncing: Fatal exception", "Kernel panic"),
        ("Call Trace:", "Call Trace"),
        ("BUG: KASAN: slab-out-of-bounds in f+0x1/0x2", "BUG"),
        ("UBSAN: shift-out-of-bounds in x.c:1:2", "UBSAN"),
        ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "RCU stall"),
        ("INFO: task insmod:134 blocked for more than 120 seconds.", "hung task"),
    ],
)
def test_splat_kinds(line: str, kind: str) -> None:
    assert [s.kind for s in dmesg.scan_splats([line])] == [kind]


def test_every_splat_kind_has_one_pattern_in_order() -> None:
    # The kinds are a type (SplatKind) and the table's keys: they must not drift apart.
    assert [kind for kind, _ in dmesg.SPLAT_PATTERNS] == list(get_args(dmesg.SplatKind))


def test_bare_call_trace_is_reported() -> None:
    lines = ["CPU: 0 PID: 1 Comm: sh", "Call Trace:", " <TASK>", " dump_stack+0x1/0x2"]
    assert [s.kind for s in dmesg.scan_splats(lines)] == ["Call Trace"]


def test_taint_letters_from_the_captured_values() -> None:
    # 0 before, 12288 after goodmod, 12928 after oopsmod (README.md).
    assert dmesg.taint_letters(0) == ""
    assert dmesg.taint_letters(12288) == "OE"
    assert dmesg.taint_letters(12928) == "DWOE"
    assert dmesg.taint_describe(12928 & ~12288) == "DW (DIE, WARN)"
    assert dmesg.taint_describe(0) == "none"
    assert dmesg.taint_letters(1 << 15) == "K"
    assert dmesg.taint_letters(1 << 30) == "?30"


def test_letters_mask_round_trip() -> None:
    assert dmesg.letters_mask("OE") == 12288
    for bit, letter in enumerate(dmesg.TAINT_LETTERS):
        assert dmesg.letters_mask(letter) == 1 << bit
    with pytest.raises(ValueError, match="unknown taint letter"):
        dmesg.letters_mask("Z")


def test_parse_tainted() -> None:
    assert dmesg.parse_tainted("12928\n") == 12928
    with pytest.raises(ValueError, match="not a taint value"):
        dmesg.parse_tainted("cat: /proc/sys/kernel/tainted: No such file")
