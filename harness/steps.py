"""One module's step in a booted guest: insmod, checks, rmmod, and the verdict.

Every judgement is made from the kernel's own output: insmod's exit status, the
kernel log after a canary, the guest's /proc/kallsyms and /proc/sys/kernel/tainted.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field

from harness import dmesg
from harness.build import BuiltModule
from harness.expect import Expectation, Sample
from harness.guest import Guest
from harness.kernel import Kernel
from harness.results import FAIL, PASS, XFAIL, XPASS, ModuleResult
from harness.symbols import SymbolTable

# klp_report() in harness/include/klp_sample.h prints this line.
RESOLVED = re.compile(r"klp-harness: resolved (?P<name>[^,\s]+),(?P<pos>\d+) 0x(?P<addr>[0-9a-f]+)")
# Taints a sample module may add: out-of-tree and unsigned.
ALLOWED_TAINT = dmesg.letters_mask("OE")


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


def missing_patterns(patterns: tuple[str, ...], lines: list[str]) -> list[str]:
    """The patterns no line matches."""
    return [p for p in patterns if not any(re.search(p, line) for line in lines)]


def matching_lines(patterns: tuple[str, ...], lines: list[str]) -> list[str]:
    return [line for p in patterns for line in lines if re.search(p, line)][: len(patterns) * 2]


def check_addresses(lines: list[str], kallsyms: SymbolTable, verdict: Verdict) -> set[str]:
    """Each `resolved NAME,POS ADDR` line against the guest's kallsyms; returns the names seen."""
    seen = set()
    for line in lines:
        m = RESOLVED.search(line)
        if not m:
            continue
        name, pos, addr = m.group("name"), int(m.group("pos")), int(m.group("addr"), 16)
        seen.add(name)
        resolution = kallsyms.resolve(name, pos)
        if not resolution.ok or resolution.address is None:
            verdict.problems.append(f"{name},{pos}: the guest's kallsyms says {resolution.message}")
            continue
        if addr != resolution.address:
            verdict.problems.append(
                f"{name},{pos}: module got 0x{addr:x}, /proc/kallsyms has 0x{resolution.address:x}"
            )
            continue
        kind = next(c.type for c in resolution.candidates if c.address == addr)
        verdict.evidence += [line, f"/proc/kallsyms: {addr:016x} {kind} {name}"]
    return seen


def _scan(lines: list[str], verdict: Verdict, what: str) -> None:
    for splat in dmesg.scan_splats(lines):
        verdict.problems.append(f"{what}: kernel {splat.kind}: {splat.line}")


class Step:
    """Runs one sample in a guest; `result()` gives the ModuleResult."""

    def __init__(self, guest: Guest, sample: Sample, expectation: Expectation, built: BuiltModule):
        self.guest, self.sample, self.expectation, self.built = guest, sample, expectation, built
        self.verdict = Verdict()

    def _logged(self, label: str, cmd: str, timeout: float = 60) -> tuple[int, str, list[str]]:
        canary = self.guest.kmsg_canary(f"{self.sample.name} {label}")
        res = self.guest.run(cmd, timeout)
        lines = self.guest.dmesg_since(canary)
        _scan(lines, self.verdict, label)
        return res.status, res.output.strip(), lines

    def _insmod_failed(self, status: int, output: str, lines: list[str]) -> str:
        tail = " | ".join(lines[-3:]) or output
        return f"insmod exited {status}: {tail}"

    def run(self) -> ModuleResult:
        start = time.monotonic()
        taint_before = self.guest.tainted()
        outcome, reason = self._load_and_check()
        new_taint = (self.guest.tainted() & ~taint_before) & ~ALLOWED_TAINT
        if new_taint:
            self.verdict.problems.append(f"new taint: {dmesg.taint_describe(new_taint)}")
        if self.verdict.problems:
            outcome, reason = FAIL, "; ".join(self.verdict.problems)
        return ModuleResult(
            sample=self.sample.name,
            module=self.sample.module,
            outcome=outcome,
            expected=self.expectation.outcome,
            reason=reason,
            seconds=round(time.monotonic() - start, 2),
            evidence=self.verdict.evidence,
            converted=list(self.built.converted),
            toolchain=self.built.toolchain,
            build_log=str(self.built.log),
        )

    def _load_and_check(self) -> tuple[str, str]:
        exp = self.expectation
        ko = shlex.quote(str(self.built.ko))
        status, output, lines = self._logged("insmod", f"insmod {ko}")
        if exp.outcome == "refused":
            if status == 0:
                self._unload()
                return XPASS, "loaded, but a refusal was expected"
            missing = missing_patterns(exp.dmesg, lines)
            if missing:
                return FAIL, f"refused, but without the expected line(s): {'; '.join(missing)}"
            self.verdict.evidence += matching_lines(exp.dmesg, lines)
            return XFAIL, "refused as expected: " + " | ".join(matching_lines(exp.dmesg, lines)[:1])
        if status != 0:
            return FAIL, self._insmod_failed(status, output, lines)
        missing = missing_patterns(exp.dmesg, lines)
        if missing:
            self.verdict.problems.append(f"dmesg lacks: {'; '.join(missing)}")
        self.verdict.evidence += matching_lines(exp.dmesg, lines)
        kallsyms = SymbolTable.parse(self.guest.kallsyms(), "guest /proc/kallsyms")
        seen = check_addresses(lines, kallsyms, self.verdict)
        unreported = [n for n in exp.resolved if n not in seen]
        if unreported:
            self.verdict.problems.append(f"module did not report: {', '.join(unreported)}")
        for check in exp.checks:
            self._check(check.cmd, check.status, check.output, check.dmesg)
        self._unload()
        return PASS, ""

    def _check(
        self, cmd: str, want_status: int, output: tuple[str, ...], want: tuple[str, ...]
    ) -> None:
        status, text, lines = self._logged("check", cmd)
        if status != want_status:
            self.verdict.problems.append(
                f"`{cmd}` exited {status}, expected {want_status}: {text[-200:]}"
            )
        for pattern in missing_patterns(output, text.splitlines()):
            self.verdict.problems.append(f"`{cmd}` printed no line matching {pattern!r}")
        for pattern in missing_patterns(want, lines):
            self.verdict.problems.append(f"`{cmd}` logged no line matching {pattern!r}")
        self.verdict.evidence += [f"$ {cmd}", *text.splitlines()[:3], *matching_lines(want, lines)]

    def _unload(self) -> None:
        status, output, lines = self._logged("rmmod", f"rmmod {shlex.quote(self.sample.module)}")
        if status != 0:
            self.verdict.problems.append(f"rmmod exited {status}: {output}")
        missing = missing_patterns(self.expectation.rmmod_dmesg, lines)
        if missing:
            self.verdict.problems.append(f"rmmod did not log: {'; '.join(missing)}")
        self.verdict.evidence += matching_lines(self.expectation.rmmod_dmesg, lines)


def run_step(
    guest: Guest, kernel: Kernel, sample: Sample, expectation: Expectation, built: BuiltModule
) -> ModuleResult:
    """Load `built` in `guest` and judge it against `expectation` (kernel: for messages)."""
    del kernel  # the expectation was already chosen for it
    return Step(guest, sample, expectation, built).run()
