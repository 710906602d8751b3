"""The verdict on one module step: a pure function of what the step did (its transcript),
what the module's expect.toml says for this kernel, and the guest's /proc/kallsyms.

The order of the rules is the order of the step: required modules load, the module
loads (or is refused), each check, rmmod, the addresses the module printed against
kallsyms, required modules unload; then, over the whole step, kernel splats and new taint.
A guest that died during the step fails it with the cause and the console's last lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.suite.assertions import (
    Finding,
    KallsymsIndex,
    check_addresses,
    check_expected,
    check_splats,
    check_taint,
    parse_resolved,
)
from harness.suite.memcheck import MAX_MISMATCHES, verify
from harness.suite.results import FAIL, PASS, XFAIL, XPASS, ModuleResult, Outcome
from harness.suite.samples import Expectation, GuestCheck
from harness.suite.transcript import Command, Crash, Role, Transcript
from harness.vm import dmesg

MAX_EVIDENCE_LINES = 40  # console lines kept from a guest that died during the step
ALWAYS_ALLOWED_TAINT = "OE"  # out-of-tree, unsigned: every sample module sets them


def judge(
    transcript: Transcript, expectation: Expectation, kallsyms: KallsymsIndex | None
) -> ModuleResult:
    """The step's result. `kallsyms` may be None when `wants_kallsyms` says it is not read."""
    memory = ""
    if transcript.crash is not None:
        outcome, reason, evidence = _crashed(transcript.crash)
    else:
        walk = _Walk(transcript, expectation, kallsyms)
        outcome, reason, evidence = walk.verdict()
        memory = walk.memory
    return ModuleResult(
        sample=transcript.sample,
        module=transcript.module,
        outcome=outcome,
        expected=expectation.outcome,
        reason=reason,
        seconds=round(transcript.seconds, 2),
        evidence=evidence,
        converted=list(transcript.converted),
        toolchain=transcript.toolchain,
        build_log=transcript.build_log,
        console_log=transcript.console_log,
        memory=memory,
    )


def wants_kallsyms(transcript: Transcript, expectation: Expectation) -> bool:
    """Whether `judge` compares addresses, so the guest's kallsyms must be read: the module
    (after every required one) loaded where a load was expected."""
    if transcript.crash is not None or expectation.outcome == "refused":
        return False
    loads = {c.module: c.status for c in transcript.commands if c.role == "load"}
    if any(loads.get(name) != 0 for name in transcript.requires):
        return False
    insmod = _first(transcript.commands, "insmod")
    return insmod is not None and insmod.status == 0


def matching_lines(patterns: Sequence[str], lines: Sequence[str]) -> list[str]:
    """The first line each pattern matches: the evidence that the expectation held."""
    found = []
    for pattern in patterns:
        found += [line for line in lines if re.search(pattern, line)][:1]
    return found


def gist(lines: Sequence[str], output: str) -> str:
    """What a failed command's kernel lines say: the first splat (an oops's `BUG:` line,
    not the `CR2` at the end of its dump) and the last lines; else the command's output."""
    splats = dmesg.scan_splats(list(lines))
    head = [splats[0].line] if splats else []
    return " | ".join([*head, *(line for line in lines[-3:] if line not in head)]) or output


def _first(commands: Sequence[Command], role: Role, module: str | None = None) -> Command | None:
    return next(
        (c for c in commands if c.role == role and (module is None or c.module == module)), None
    )


def _crashed(crash: Crash) -> tuple[Outcome, str, list[str]]:
    """The cause (the splat or the timeout) and the console's last lines as evidence."""
    splats = dmesg.scan_splats([dmesg.strip_prefix(line) for line in crash.tail])
    reason = f"the guest stopped during this step: {crash.what}"
    if splats and splats[0].line not in reason:
        reason += f"; first splat: {splats[0].line}"
    return FAIL, reason, list(crash.tail[-MAX_EVIDENCE_LINES:])


class _Walk:
    """One reading of a finished step, collecting findings and evidence in step order."""

    def __init__(
        self, transcript: Transcript, expectation: Expectation, kallsyms: KallsymsIndex | None
    ) -> None:
        self.commands = transcript.commands
        self.record = transcript.memory
        self.memory = ""  # the summary, once checked
        self.requires = transcript.requires
        self.expectation = expectation
        self.kallsyms = kallsyms
        self.findings: list[Finding] = []
        self.evidence: list[str] = []

    def verdict(self) -> tuple[Outcome, str, list[str]]:
        outcome, reason = self._main() if self._required_loaded() else (FAIL, self._reason())
        for unload in (c for c in self.commands if c.role == "unload" and c.status != 0):
            self._find(f"rmmod {unload.module}: {unload.output.strip()}")
        lines = [line for c in self.commands for line in c.kernel]
        findings = check_splats(lines)
        if findings and outcome == FAIL:  # e.g. insmod killed by an oops: show its dump
            self.evidence += findings[0].evidence
        if self.commands:
            before, after = self.commands[0].taint_before, self.commands[-1].taint_after
            findings += check_taint(before, after, ALWAYS_ALLOWED_TAINT + self.expectation.taint)
        self.findings += findings
        if self.findings and outcome != FAIL:
            outcome, reason = FAIL, self._reason()
        return outcome, reason, self.evidence

    def _reason(self) -> str:
        return "; ".join(f.message for f in self.findings)

    def _find(self, message: str) -> None:
        self.findings.append(Finding("missing", message))

    def _required_loaded(self) -> bool:
        for name in self.requires:
            load = _first(self.commands, "load", name)
            if load is None:
                self._find(f"required {name}: not loaded")
                return False
            if load.status != 0:
                tail = gist(load.kernel, load.output.strip())
                self._find(f"required {name}: insmod exited {load.status}: {tail}")
                return False
        return True

    def _main(self) -> tuple[Outcome, str]:
        exp = self.expectation
        insmod = _first(self.commands, "insmod")
        if insmod is None:
            return FAIL, "insmod was not run"
        status, lines = insmod.status, insmod.kernel
        if exp.outcome == "refused":
            if status == 0:
                self._rmmod()
                return XPASS, "loaded, but a refusal was expected"
            missing = check_expected(lines, exp.dmesg)
            if missing:
                wanted = "; ".join(f.message for f in missing)
                return FAIL, f"refused (insmod exited {status}), but {wanted}"
            matched = matching_lines(exp.dmesg, lines)
            self.evidence += [f"insmod exited {status}", *matched]
            return XFAIL, "refused as expected: " + " | ".join(matched)
        if status != 0:
            return FAIL, f"insmod exited {status}: {gist(lines, insmod.output.strip())}"
        self._expect(exp.dmesg, lines, "insmod")
        ran = [c for c in self.commands if c.role == "check"]
        for index, want in enumerate(exp.checks):
            if index < len(ran):
                self._check(ran[index], want)
            else:
                self._find(f"`{want.cmd}` was not run")
        self._rmmod()
        self._addresses()
        self._memory()
        return (FAIL, self._reason()) if self.findings else (PASS, "")

    def _expect(self, patterns: Sequence[str], lines: Sequence[str], what: str) -> None:
        for finding in check_expected(lines, patterns):
            self._find(f"{what}: {finding.message}")
        self.evidence += matching_lines(patterns, lines)

    def _check(self, ran: Command, want: GuestCheck) -> None:
        text = ran.output.strip()
        self.evidence += [f"$ {ran.cmd}", *text.splitlines()[:3]]
        if ran.status != want.status:
            self._find(f"`{ran.cmd}` exited {ran.status}, not {want.status}: {text[-200:]}")
        out_lines = text.splitlines()
        for pattern in want.output:
            if not any(re.search(pattern, line) for line in out_lines):
                self._find(f"`{ran.cmd}` printed no line matching /{pattern}/")
        self._expect(want.dmesg, ran.kernel, f"`{ran.cmd}`")

    def _rmmod(self) -> None:
        rmmod = _first(self.commands, "rmmod")
        if rmmod is None:
            self._find("rmmod was not run")
            return
        if rmmod.status != 0:
            self._find(f"rmmod exited {rmmod.status}: {rmmod.output.strip()}")
        self._expect(self.expectation.rmmod_dmesg, rmmod.kernel, "rmmod")

    def _memory(self) -> None:
        """Every klp relocation against the field the kernel wrote (harness.suite.memcheck).
        A step that could not read memory (no /proc/kcore) fails: the proof is missing."""
        if self.record is None or self.kallsyms is None:
            return
        result = verify(self.record, self.kallsyms)
        self.memory = result.summary
        if result.ok:
            self.evidence.append(result.summary)
            return
        if result.error:
            self._find(result.error)
            return
        first = result.mismatches[:MAX_MISMATCHES]
        more = len(result.mismatches) - len(first)
        tail = f" (+{more} more)" if more else ""
        self._find(f"klp relocation mismatch in memory: {'; '.join(first)}{tail}")
        self.evidence += [result.summary, *first]

    def _addresses(self) -> None:
        """Every address the step printed (before required modules unload) against kallsyms."""
        if self.kallsyms is None:
            raise ValueError("judge: this step's addresses need the guest's kallsyms")
        lines = [line for c in self.commands if c.role != "unload" for line in c.kernel]
        resolved = parse_resolved(lines)
        checks, findings = check_addresses(resolved, self.kallsyms)
        self.findings += findings
        for item in checks:
            if item.ok and item.entry is not None:
                self.evidence += [item.resolved.line, f"/proc/kallsyms: {item.entry.raw}"]
        reported = {r.name for r in resolved}
        unreported = [n for n in self.expectation.resolved if n not in reported]
        if unreported:
            self._find(f"module reported no address for {', '.join(unreported)}")
