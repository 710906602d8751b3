"""The verdict as a pure function, on transcripts of real boots (tests/data/transcripts): it gives
what the run reported, and a tampered copy (a wrong address, a new taint flag, a required module
that did not load, a missing kernel line) flips it. No VM."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest
from transcript_data import BOOTS, DATA, expectation, kallsyms, results, transcripts

from harness.suite.judge import judge, wants_kallsyms
from harness.suite.results import FAIL, PASS, XFAIL, XPASS, ModuleResult
from harness.suite.transcript import (
    Command,
    Role,
    Transcript,
    TranscriptError,
    load_transcript,
)
from harness.vm import dmesg

CAPTURED = [(boot, name) for boot in BOOTS for name in transcripts(boot)]
PASSES = [n for n, r in results("samples").items() if r.outcome == PASS]


def verdict(boot: str, transcript: Transcript) -> ModuleResult:
    wanted = expectation(boot, transcript.sample)
    index = kallsyms(boot) if wants_kallsyms(transcript, wanted) else None
    return judge(transcript, wanted, index)


def step(name: str, boot: str = "samples") -> Transcript:
    return transcripts(boot)[name]


def edit(
    transcript: Transcript, role: Role, change: Callable[[Command], Command], module: str = ""
) -> Transcript:
    """`transcript` with the first command of `role` (and `module`, if given) changed."""
    commands = list(transcript.commands)
    index = next(i for i, c in enumerate(commands) if c.role == role and module in ("", c.module))
    commands[index] = change(commands[index])
    return replace(transcript, commands=tuple(commands))


@pytest.mark.parametrize(("boot", "name"), CAPTURED)
def test_judge_gives_what_the_run_reported(boot: str, name: str) -> None:
    assert verdict(boot, step(name, boot)) == results(boot)[name]


def test_the_captured_set_covers_every_kind_of_step() -> None:
    got = {name: r.outcome for boot in BOOTS for name, r in results(boot).items()}
    assert len(PASSES) == 9
    assert got["symbol_missing"] == got["sympos_ambiguous"] == XFAIL
    assert got["panic_init"] == got["hang_init"] == got["oops_init"] == FAIL
    assert step("panic_init", "hostile").crash is not None
    assert step("hang_init", "hostile").crash is not None
    oops = step("oops_init", "hostile")
    assert oops.crash is None and oops.commands[0].status == 137
    assert step("livepatch").requires == ("klp_livepatch_target",)


@pytest.mark.parametrize(("boot", "name"), CAPTURED)
def test_transcripts_read_back_as_written(boot: str, name: str) -> None:
    path = DATA / boot / f"{name}.json"
    transcript = load_transcript(path)
    assert transcript.to_json() == json.loads(path.read_text())
    assert Transcript.from_json(transcript.to_json()) == transcript


@pytest.mark.parametrize("name", PASSES)
def test_passes_prove_every_address_against_kallsyms(name: str) -> None:
    result = verdict("samples", step(name))
    assert result.outcome == PASS and result.reason == ""
    if expectation("samples", name).resolved:
        assert any(line.startswith("/proc/kallsyms: ") for line in result.evidence)


def test_expected_refusals() -> None:
    ambiguous = verdict("samples", step("sympos_ambiguous"))
    assert ambiguous.outcome == XFAIL
    assert ambiguous.reason == (
        "refused as expected: livepatch: unresolvable ambiguity for symbol 'init_once' "
        "in object '(null)'"
    )
    assert ambiguous.evidence[0] == "insmod exited 22"  # EINVAL
    missing = verdict("samples", step("symbol_missing"))
    assert missing.outcome == XFAIL
    assert "symbol 'klp_harness_no_such_function' not found" in missing.reason


def test_the_livepatch_guard_refuses_every_converted_module() -> None:
    """source:6.1:no-livepatch (tests/data/transcripts/guard): every converted module, the
    user's module without address checks of its own included, is refused at insmod by the
    loader's own line naming the guard symbol; the livepatch sample by its marking."""
    for name, transcript in transcripts("guard").items():
        result = verdict("guard", transcript)
        if name == "livepatch_target":  # no klp relocations: nothing to guard
            assert result.outcome == PASS
            continue
        assert result.outcome == XFAIL, name
        insmod = next(c for c in transcript.commands if c.role == "insmod")
        assert insmod.status != 0
        if name == "livepatch":
            assert "livepatch support is disabled" in result.reason
        else:
            line = f"{transcript.commands[0].module}: Unknown symbol klp_enable_patch (err -2)"
            assert line in insmod.kernel and line in result.reason
    # the same transcript, as if the module had loaded (and stayed): not a refusal any more
    loaded = edit(step("usermod", "guard"), "insmod", lambda c: replace(c, status=0, kernel=()))
    assert verdict("guard", loaded).outcome == FAIL


def test_a_wrong_address_fails_and_shows_what_is_there() -> None:
    index = kallsyms("samples")
    clone = index.vmlinux["kernel_clone"][0].address
    do_exit = index.vmlinux["do_exit"][0]
    right = f"0x{clone:016x}"
    wrong = f"0x{do_exit.address:016x}"

    def moved(c: Command) -> Command:
        assert any(right in line for line in c.kernel)
        return replace(c, kernel=tuple(line.replace(right, wrong) for line in c.kernel))

    result = verdict("samples", edit(step("kernel_clone"), "insmod", moved))
    assert result.outcome == FAIL
    assert result.reason == f"kernel_clone,0: module saw {wrong}, kallsyms has {clone:#x}"
    assert f"/proc/kallsyms: {index.vmlinux['do_exit'][0].raw}" in result.evidence


def test_an_extra_taint_letter_fails() -> None:
    warn = dmesg.letters_mask("W")
    tainted = edit(
        step("kernel_clone"), "rmmod", lambda c: replace(c, taint_after=c.taint_after | warn)
    )
    result = verdict("samples", tainted)
    assert result.outcome == FAIL
    assert result.reason.startswith("new taint W (WARN); before OE, after")
    # K is what a livepatch may add, and only it.
    assert verdict("samples", step("livepatch")).outcome == PASS
    livepatched = edit(
        step("kernel_clone"),
        "rmmod",
        lambda c: replace(c, taint_after=c.taint_after | dmesg.letters_mask("K")),
    )
    assert verdict("samples", livepatched).reason.startswith("new taint K (LIVEPATCH)")


def test_a_missing_required_module_fails() -> None:
    livepatch = step("livepatch")
    dropped = replace(livepatch, commands=tuple(c for c in livepatch.commands if c.role != "load"))
    result = verdict("samples", dropped)
    assert (result.outcome, result.reason) == (FAIL, "required klp_livepatch_target: not loaded")
    assert not wants_kallsyms(dropped, expectation("samples", "livepatch"))

    refused = edit(livepatch, "load", lambda c: replace(c, status=1, output="insmod: ERROR\n"))
    result = verdict("samples", refused)
    assert result.outcome == FAIL
    assert result.reason.startswith("required klp_livepatch_target: insmod exited 1: ")


def test_a_missing_kernel_line_fails() -> None:
    def without(pattern: str) -> Callable[[Command], Command]:
        return lambda c: replace(c, kernel=tuple(x for x in c.kernel if pattern not in x))

    clone = verdict("samples", edit(step("kernel_clone"), "insmod", without("resolved do_exit")))
    assert (clone.outcome, clone.reason) == (FAIL, "module reported no address for do_exit")
    unloaded = verdict("samples", edit(step("kernel_clone"), "rmmod", without("unloaded")))
    assert unloaded.reason == "rmmod: no dmesg line matches /klp_kernel_clone: unloaded/"
    ambiguous = edit(step("sympos_ambiguous"), "insmod", without("unresolvable ambiguity"))
    result = verdict("samples", ambiguous)
    assert result.outcome == FAIL
    assert result.reason.startswith("refused (insmod exited 22), but no dmesg line matches /")


def test_a_check_that_printed_something_else_fails() -> None:
    changed = edit(step("sympos_2"), "check", lambda c: replace(c, output="nothing\n", status=1))
    result = verdict("samples", changed)
    assert result.outcome == FAIL
    cmd = expectation("samples", "sympos_2").checks[0].cmd
    assert result.reason == (
        f"`{cmd}` exited 1, not 0: nothing; "
        f"`{cmd}` printed no line matching /^[0-9]+ [0-9a-f]{{16}} t init_once$/"
    )


def test_a_refused_module_that_loads_is_an_unexpected_pass() -> None:
    rmmod = step("kernel_clone").commands[-1]
    loaded = edit(step("sympos_ambiguous"), "insmod", lambda c: replace(c, status=0))
    loaded = replace(
        loaded, commands=(*loaded.commands, replace(rmmod, module="klp_sympos_ambiguous"))
    )
    result = verdict("samples", loaded)
    assert (result.outcome, result.reason) == (XPASS, "loaded, but a refusal was expected")


def test_a_splat_fails_a_step_that_otherwise_passed() -> None:
    oops = step("oops_init", "hostile").commands[0].kernel
    splatted = edit(step("kernel_clone"), "insmod", lambda c: replace(c, kernel=c.kernel + oops))
    result = verdict("samples", splatted)
    assert result.outcome == FAIL
    assert result.reason == (
        "BUG: BUG: kernel NULL pointer dereference, address: 0000000000000000; "
        "Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI"
    )


def test_an_oops_in_insmod_fails_with_its_dump() -> None:
    result = verdict("hostile", step("oops_init", "hostile"))
    assert result.outcome == FAIL
    assert result.reason.startswith("insmod exited 137: BUG: kernel NULL pointer dereference")
    assert "#PF: supervisor write access in kernel mode" in result.evidence


def test_a_guest_that_dies_mid_step_blames_the_step() -> None:
    panic = verdict("hostile", step("panic_init", "hostile"))
    assert panic.outcome == FAIL
    assert panic.reason.startswith("the guest stopped during this step: command: the guest ended")
    assert "Kernel panic - not syncing: klp_hostile_panic: panic in init" in panic.reason
    assert any("Kernel panic" in line for line in panic.evidence)
    assert len(panic.evidence) <= 40
    hang = verdict("hostile", step("hang_init", "hostile"))
    assert hang.outcome == FAIL
    assert "no answer to 'hang_init insmod: insmod " in hang.reason and "within" in hang.reason
    assert not wants_kallsyms(step("panic_init", "hostile"), expectation("hostile", "panic_init"))


def test_kallsyms_is_required_only_where_addresses_are_judged() -> None:
    clone = step("kernel_clone")
    wanted = expectation("samples", "kernel_clone")
    assert wants_kallsyms(clone, wanted)
    with pytest.raises(ValueError, match="need the guest's kallsyms"):
        judge(clone, wanted, None)
    assert not wants_kallsyms(step("sympos_ambiguous"), expectation("samples", "sympos_ambiguous"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schema": "other"}, "t.json: not a klp-harness/transcript/1 file"),
        ({"schema": "klp-harness/transcript/1"}, "t.json: malformed transcript: KeyError"),
        ([], "t.json: malformed transcript"),
    ],
)
def test_a_bad_transcript_is_one_clear_error(data: object, message: str) -> None:
    with pytest.raises(TranscriptError, match=message):
        Transcript.from_json(data, "t.json")


def test_a_bad_role_or_status_is_refused() -> None:
    data = step("kernel_clone").to_json()
    data["commands"][0]["role"] = "reboot"
    with pytest.raises(TranscriptError, match="unknown role 'reboot'"):
        Transcript.from_json(data)
    data["commands"][0]["role"] = "insmod"
    data["commands"][0]["status"] = True
    with pytest.raises(TranscriptError, match="expected an integer"):
        Transcript.from_json(data)
