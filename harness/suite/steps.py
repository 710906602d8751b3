"""One module's step in a booted guest: insmod, checks, rmmod, and the verdict.

Every judgement comes from the kernel's own output: insmod's exit status, the kernel log
after a canary, the guest's /proc/kallsyms and /proc/sys/kernel/tainted; the checks
themselves are the pure functions of harness.suite.assertions.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence

from harness.build.modules import BuiltModule
from harness.suite import assertions as check
from harness.suite.results import FAIL, PASS, XFAIL, XPASS, ModuleResult
from harness.suite.samples import Expectation, Sample
from harness.vm import dmesg
from harness.vm.guest import Guest


def matching_lines(patterns: Sequence[str], lines: Sequence[str]) -> list[str]:
    """The first line each pattern matches: the evidence that the expectation held."""
    found = []
    for pattern in patterns:
        found += [line for line in lines if re.search(pattern, line)][:1]
    return found


class Step:
    """Runs one sample (after the samples it requires) in a guest and judges it."""

    def __init__(
        self,
        guest: Guest,
        sample: Sample,
        expectation: Expectation,
        built: BuiltModule,
        required: Sequence[BuiltModule] = (),
    ):
        self.guest, self.sample, self.expectation = guest, sample, expectation
        self.built, self.required = built, required
        self.findings: list[check.Finding] = []
        self.evidence: list[str] = []
        self.lines: list[str] = []  # every kernel line of the step, for address and splat checks
        self.taint: list[int] = []  # before the first command, after the last

    def _logged(self, label: str, cmd: str) -> tuple[int, str, list[str]]:
        logged = self.guest.run_logged(cmd, f"{self.sample.name} {label}", self.sample.timeout)
        self.lines += logged.lines
        self.taint = [self.taint[0] if self.taint else logged.taint_before, logged.taint_after]
        return logged.result.status, logged.result.output.strip(), logged.lines

    def _expect(self, patterns: Sequence[str], lines: Sequence[str], what: str) -> None:
        for finding in check.check_expected(lines, patterns):
            self.findings.append(check.Finding(finding.kind, f"{what}: {finding.message}"))
        self.evidence += matching_lines(patterns, lines)

    def run(self) -> ModuleResult:
        start = time.monotonic()
        loaded = self._load_required()
        outcome, reason = self._main() if loaded else (FAIL, self._reason())
        self._unload_required()
        findings = check.check_splats(self.lines)
        if findings and outcome == FAIL:  # e.g. insmod killed by an oops: show its dump
            self.evidence += [line for f in findings[:1] for line in f.evidence]
        before, after = self.taint
        findings += check.check_taint(before, after, "OE" + self.expectation.taint)
        self.findings += findings
        if self.findings and outcome != FAIL:
            outcome, reason = FAIL, self._reason()
        return ModuleResult(
            sample=self.sample.name,
            module=self.sample.module,
            outcome=outcome,
            expected=self.expectation.outcome,
            reason=reason,
            seconds=round(time.monotonic() - start, 2),
            evidence=self.evidence,
            converted=list(self.built.converted),
            toolchain=self.built.toolchain,
            build_log=str(self.built.log),
        )

    def _reason(self) -> str:
        return "; ".join(f.message for f in self.findings)

    def _load_required(self) -> bool:
        for dep in self.required:
            status, output, lines = self._logged(
                f"load {dep.module}", f"insmod {_q(self.guest.path(dep.ko))}"
            )
            if status != 0:
                tail = _gist(lines, output)
                self.findings.append(
                    check.Finding(
                        "missing", f"required {dep.module}: insmod exited {status}: {tail}"
                    )
                )
                return False
        return True

    def _unload_required(self) -> None:
        for dep in reversed(self.required):
            status, output, _ = self._logged(f"unload {dep.module}", f"rmmod {_q(dep.module)}")
            if status != 0:
                self.findings.append(check.Finding("missing", f"rmmod {dep.module}: {output}"))

    def _main(self) -> tuple[str, str]:
        exp = self.expectation
        status, output, lines = self._logged(
            "insmod", f"insmod {_q(self.guest.path(self.built.ko))}"
        )
        if exp.outcome == "refused":
            if status == 0:
                self._unload()
                return XPASS, "loaded, but a refusal was expected"
            missing = check.check_expected(lines, exp.dmesg)
            if missing:
                wanted = "; ".join(f.message for f in missing)
                return FAIL, f"refused (insmod exited {status}), but {wanted}"
            self.evidence += [f"insmod exited {status}", *matching_lines(exp.dmesg, lines)]
            return XFAIL, "refused as expected: " + " | ".join(matching_lines(exp.dmesg, lines))
        if status != 0:
            return FAIL, f"insmod exited {status}: {_gist(lines, output)}"
        self._expect(exp.dmesg, lines, "insmod")
        for guest_check in exp.checks:
            self._check(guest_check.cmd, guest_check.status, guest_check.output, guest_check.dmesg)
        self._unload()
        self._addresses()
        return (FAIL, self._reason()) if self.findings else (PASS, "")

    def _addresses(self) -> None:
        """Every address any part of the step printed, against the guest's /proc/kallsyms."""
        resolved = check.parse_resolved(self.lines)
        index = check.parse_kallsyms(self.guest.kallsyms(), "guest /proc/kallsyms")
        checks, findings = check.check_addresses(resolved, index)
        self.findings += findings
        for item in checks:
            if item.ok and item.entry is not None:
                self.evidence += [item.resolved.line, f"/proc/kallsyms: {item.entry.line}"]
        reported = {r.name for r in resolved}
        unreported = [n for n in self.expectation.resolved if n not in reported]
        if unreported:
            self.findings.append(
                check.Finding("missing", f"module reported no address for {', '.join(unreported)}")
            )

    def _check(
        self, cmd: str, want_status: int, output: Sequence[str], want: Sequence[str]
    ) -> None:
        status, text, lines = self._logged("check", cmd)
        self.evidence += [f"$ {cmd}", *text.splitlines()[:3]]
        if status != want_status:
            self.findings.append(
                check.Finding(
                    "missing", f"`{cmd}` exited {status}, not {want_status}: {text[-200:]}"
                )
            )
        out_lines = text.splitlines()
        for pattern in output:
            if not any(re.search(pattern, line) for line in out_lines):
                self.findings.append(
                    check.Finding("missing", f"`{cmd}` printed no line matching /{pattern}/")
                )
        self._expect(want, lines, f"`{cmd}`")

    def _unload(self) -> None:
        status, output, lines = self._logged("rmmod", f"rmmod {_q(self.sample.module)}")
        if status != 0:
            self.findings.append(check.Finding("missing", f"rmmod exited {status}: {output}"))
        self._expect(self.expectation.rmmod_dmesg, lines, "rmmod")


def _gist(lines: Sequence[str], output: str) -> str:
    """What a failed command's kernel lines say: the first splat (an oops's `BUG:` line,
    not the `CR2` at the end of its dump) and the last lines; else the command's output."""
    splats = dmesg.scan_splats(list(lines))
    head = [splats[0].line] if splats else []
    return " | ".join([*head, *(line for line in lines[-3:] if line not in head)]) or output


def _q(value: object) -> str:
    return shlex.quote(str(value))


def run_step(
    guest: Guest,
    sample: Sample,
    expectation: Expectation,
    built: BuiltModule,
    required: Sequence[BuiltModule] = (),
) -> ModuleResult:
    """Load `built` (after `required`) in `guest` and judge it against `expectation`."""
    return Step(guest, sample, expectation, built, required).run()
