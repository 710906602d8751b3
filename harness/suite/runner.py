"""A run: for each kernel, fetch it, build and convert every module, boot once, run every step.

Each kernel's result is saved as soon as it is known; a kernel that cannot be fetched,
built for or booted ends with its reason, and the other kernels still run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.build.modules import BuiltModule, build_with_requirements, builds_dir
from harness.build.toolchain import select
from harness.errors import BootError, HarnessError
from harness.fileio import exclusive_dir, printable
from harness.kernels.kernel import Kernel
from harness.suite.results import FAIL, NA, NOT_RUN, KernelResult, ModuleResult, RunResults
from harness.suite.samples import Expectation, Sample
from harness.vm import dmesg
from harness.vm.guest import GuestError

Printer = Callable[[str], None]
MAX_BOOTS = 4  # per kernel: the first boot and three more after guests that died in a step
MAX_EVIDENCE_LINES = 40
REPORTED_OPTIONS = (
    "LIVEPATCH",
    "KALLSYMS_ALL",
    "MODULE_SIG_FORCE",
    "MODULE_SIG",
    "CC_VERSION_TEXT",
)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prepared:
    """A sample ready for the guest (or already decided without it)."""

    sample: Sample
    expectation: Expectation
    built: BuiltModule | None
    result: ModuleResult | None  # set when no guest step is needed (n/a, build failure)
    required: tuple[BuiltModule, ...] = ()


def describe_kernel(kernel: Kernel, result: KernelResult) -> None:
    result.name = kernel.name
    result.release = kernel.release
    result.package_version = kernel.package_version
    result.packages = list(kernel.packages)
    result.config = {o: kernel.config_value(o) for o in REPORTED_OPTIONS}
    result.config_hash = "sha256:" + hashlib.sha256(kernel.config.read_bytes()).hexdigest()
    with contextlib.suppress(HarnessError):  # else every module's build failure says why
        result.toolchain = select(kernel).description


def prepare(kernel: Kernel, sample: Sample, out: Printer = _stderr) -> Prepared:
    """Decide applicability, then build and convert; a build failure is that module's failure."""
    expectation = sample.expectation(kernel)
    if expectation.outcome == "not-applicable":
        result = ModuleResult(
            sample.name, sample.module, NA, expectation.outcome, expectation.reason
        )
        return Prepared(sample, expectation, None, result)
    try:
        built, required = build_with_requirements(kernel, sample)
    except HarnessError as err:
        result = ModuleResult(
            sample.name,
            sample.module,
            FAIL,
            expectation.outcome,
            f"build: {err}",
            build_failed=True,
        )
        out(f"  {sample.name}: build failed: {str(err).splitlines()[0]}")
        return Prepared(sample, expectation, None, result)
    state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
    out(f"  {sample.name}: {state} with {built.toolchain}; converted {' '.join(built.converted)}")
    return Prepared(sample, expectation, built, None, required)


def _unfinished(
    item: Prepared, outcome: str, reason: str, console_log: str, evidence: Sequence[str] = ()
) -> ModuleResult:
    """A module whose step did not end normally: not run, or the guest died during it."""
    built = item.built
    return ModuleResult(
        item.sample.name,
        item.sample.module,
        outcome,
        item.expectation.outcome,
        reason,
        evidence=list(evidence),
        converted=list(built.converted) if built else [],
        toolchain=built.toolchain if built else "",
        build_log=str(built.log) if built else "",
        console_log=console_log,
    )


def _died_in_step(item: Prepared, err: BootError, console_log: str) -> ModuleResult:
    """The step that was running when the guest panicked, hung or turned hostile: it fails,
    with the cause (the splat or the timeout) and the console's last lines as evidence."""
    what = err.what if isinstance(err, GuestError) else str(err).split("\n", 1)[0]
    tail = err.tail if isinstance(err, GuestError) else ()
    splats = dmesg.scan_splats([dmesg.strip_prefix(line) for line in tail])
    reason = f"the guest stopped during this step: {what}"
    if splats and splats[0].line not in reason:
        reason += f"; first splat: {splats[0].line}"
    return _unfinished(item, FAIL, reason, console_log, tail[-MAX_EVIDENCE_LINES:])


class _Duplicate(Exception):
    """A spec naming a kernel that another spec of the run already runs."""


class _Claims:
    """Kernel names already taken by a spec of this run: two specs that name one kernel
    (debian:bookworm and its exact ABI) run it once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, str] = {}

    def claim(self, name: str, spec: str) -> str | None:
        """None when `spec` gets `name`; else the spec that has it."""
        with self._lock:
            owner = self._by_name.setdefault(name, spec)
        return None if owner == spec else owner


def run_kernel(
    spec: str,
    samples: Sequence[Sample],
    results_dir: Path,
    out: Printer,
    cpus: int | None = None,
    claims: _Claims | None = None,
    max_boots: int = MAX_BOOTS,
) -> KernelResult:
    """One kernel's results; `_Duplicate` when another spec of the run has this kernel."""
    from harness.kernels.acquire import acquire

    result = KernelResult(spec=spec)
    out(f"{spec}: fetching")
    try:
        kernel = acquire(spec)
    except HarnessError as err:
        result.error = f"kernel: {err}"
        return result
    owner = claims.claim(kernel.name, spec) if claims else None
    if owner is not None:
        raise _Duplicate(f"{spec}: is {kernel.name}, which {owner} runs already; not run twice")
    describe_kernel(kernel, result)
    out(f"{spec}: {kernel.name} ({kernel.package_version}); building {len(samples)} module(s)")
    prepared = [prepare(kernel, s, out) for s in samples]
    results = {p.sample.name: p.result for p in prepared if p.result is not None}
    pending = [p for p in prepared if p.result is None]
    if pending:
        results.update(_run_steps(kernel, pending, results_dir, out, cpus, result, max_boots))
    result.modules = [results[s.name] for s in samples if s.name in results]
    return result


def _run_steps(
    kernel: Kernel,
    pending: list[Prepared],
    results_dir: Path,
    out: Printer,
    cpus: int | None,
    result: KernelResult,
    max_boots: int,
) -> dict[str, ModuleResult]:
    """Every pending step, in boots of `kernel`: when the guest dies or hangs during a step,
    that step fails and a new boot runs the rest (up to `max_boots` boots)."""
    from harness.suite.steps import run_step
    from harness.vm.boot import boot

    done: dict[str, ModuleResult] = {}
    left = list(pending)
    boots = 0
    while left and boots < max_boots:
        boots += 1
        log = str(results_dir / f"console-{kernel.name}.log")
        running: Prepared | None = None
        try:
            with boot(kernel, Path(log), cpus=cpus, modules=builds_dir(kernel)) as guest:
                log = str(guest.console_log)
                if boots == 1:
                    result.console_log = log
                    result.accel, result.boot_seconds = guest.accel, round(guest.boot_seconds, 1)
                out(
                    f"{kernel.name}: boot {boots} under {guest.accel} in {guest.boot_seconds:.1f} s"
                )
                while left:
                    running = left.pop(0)
                    assert running.built is not None
                    step = run_step(guest, running.sample, running.expectation, running.built,
                                    running.required)  # fmt: skip
                    step.console_log = log
                    done[running.sample.name] = step
                    running = None
                    out(printable(f"  {step.sample}: {step.outcome} {step.reason}".rstrip()))
        except BootError as err:
            if running is None:  # the boot itself failed: no point in booting again
                result.error = f"guest: {err}"
                break
            # The guest is gone or in an unknown state: blame this step, boot again.
            done[running.sample.name] = _died_in_step(running, err, log)
            out(f"  {running.sample.name}: fail: the guest stopped during this step")
    why = (
        f"not run: the guest stopped during {max_boots} steps, no boot left"
        if not result.error
        else "not run: the guest could not be booted for this step"
    )
    for item in left:
        done[item.sample.name] = _unfinished(item, NOT_RUN, why, result.console_log)
    return done


def default_jobs() -> int:
    """Kernels run at once: a TCG guest keeps one core busy, so one per core."""
    return max(1, os.cpu_count() or 1)


def run(
    specs: Sequence[str],
    samples: Sequence[Sample],
    results_dir: Path,
    out: Printer = _stderr,
    jobs: int = 1,
    max_boots: int = MAX_BOOTS,
) -> RunResults:
    """Every kernel x every sample; `jobs` kernels at once. The results file is rewritten
    as each kernel finishes, with the kernels in the order given."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = exclusive_dir(results_dir, f"run-{stamp}")  # two runs in one second: -2
    claims = _Claims()
    results = RunResults(path=run_dir / "results.json")
    slots: list[KernelResult | None] = [None] * len(specs)
    lock = threading.Lock()
    # Side by side, each guest gets its share of the cores; alone, vng's default.
    cpus = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def one(index: int) -> None:
        spec = specs[index]
        start = time.monotonic()
        printer = out if jobs == 1 else (lambda line: out(f"[{spec}] {line.strip()}"))
        try:
            kernel_result = run_kernel(spec, samples, run_dir, printer, cpus, claims, max_boots)
        except HarnessError as err:  # e.g. a malformed expectation: that kernel's failure
            kernel_result = KernelResult(spec=spec, error=str(err))
        except _Duplicate as dup:
            printer(str(dup))
            return
        with lock:
            slots[index] = kernel_result
            results.kernels = [k for k in slots if k is not None]
            results.save()
        printer(f"{spec}: done in {time.monotonic() - start:.1f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, i) for i in range(len(specs))]:
            future.result()
    return results
