"""A run: for each kernel, fetch it, build and convert every module, boot once, run every step.

Each kernel's result is saved as soon as it is known; a kernel that cannot be fetched,
built for or booted ends with its reason, and the other kernels still run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.build.guard import ALLOW_OPTION
from harness.build.modules import BuiltModule, build_with_requirements, builds_dir
from harness.build.toolchain import select
from harness.console import Printer
from harness.errors import BootError, HarnessError
from harness.fileio import exclusive_dir
from harness.kernels.kernel import Kernel
from harness.suite.results import (
    FAIL,
    NA,
    NOT_RUN,
    KernelResult,
    ModuleResult,
    RunResults,
)
from harness.suite.samples import Expectation, Sample
from harness.suite.steps import GuestSteps, StepGuest
from harness.suite.transcript import transcript_file

# Without the option a kernel without livepatch runs nothing: see harness.build.guard.
NO_LIVEPATCH = (
    "CONFIG_LIVEPATCH is not set: the kernel would leave klp relocations at 0 "
    f"(give {ALLOW_OPTION} to check that the livepatch guard refuses the load)"
)
MAX_BOOTS = 4  # per kernel: the first boot and three more after guests that died in a step
REPORTED_OPTIONS = (
    "LIVEPATCH",
    "KALLSYMS_ALL",
    "MODULE_SIG_FORCE",
    "MODULE_SIG",
    "CC_VERSION_TEXT",
)


class BootedGuest(StepGuest, Protocol):
    """A guest at a ready shell (harness.vm.guest.Guest), as the runner sees it."""

    @property
    def accel(self) -> str: ...

    @property
    def boot_seconds(self) -> float: ...


# Boot a kernel, writing its console to the given log (`cpus` vCPUs, None: the default).
Booter = Callable[[Kernel, Path, int | None], AbstractContextManager[BootedGuest]]


class Builder(Protocol):
    """Builds a sample and the samples it requires (harness.build.modules)."""

    def __call__(
        self, kernel: Kernel, sample: Sample, /, *, allow_no_livepatch: bool = False
    ) -> tuple[BuiltModule, tuple[BuiltModule, ...]]: ...


Acquirer = Callable[[str, Printer], Kernel]


def boot_guest(
    kernel: Kernel, console_log: Path, cpus: int | None
) -> AbstractContextManager[BootedGuest]:
    """A real boot under QEMU, with the kernel's module builds visible in the guest."""
    from harness.vm.boot import boot

    return boot(kernel, console_log, cpus=cpus, modules=builds_dir(kernel))


def acquire_kernel(spec: str, printer: Printer) -> Kernel:
    from harness.kernels.acquire import acquire

    return acquire(spec, printer=printer)


@dataclass(frozen=True)
class Backend:
    """Where a run gets its kernels, module builds and guests: the real ones by default.
    A unit test replaces them (a guest that replays recorded transcripts) to exercise
    the runner's own rules without a VM: reboots, blame, MAX_BOOTS, results on disk."""

    acquire: Acquirer = acquire_kernel
    build: Builder = build_with_requirements
    boot: Booter = boot_guest


@dataclass(frozen=True)
class Prepared:
    """A sample ready for the guest (or already decided without it)."""

    sample: Sample
    expectation: Expectation
    built: BuiltModule | None
    result: ModuleResult | None  # set when no guest step is needed (n/a, build failure)
    required: tuple[BuiltModule, ...] = ()


def describe_kernel(kernel: Kernel, result: KernelResult, printer: Printer | None = None) -> None:
    result.name = kernel.name
    result.release = kernel.release
    result.package_version = kernel.package_version
    result.packages = list(kernel.packages)
    result.arch = kernel.arch
    result.config = {o: kernel.config_value(o) for o in REPORTED_OPTIONS}
    result.config_hash = "sha256:" + hashlib.sha256(kernel.config.read_bytes()).hexdigest()
    with contextlib.suppress(HarnessError):  # else every module's build failure says why
        # The first select() may create a build root: its progress belongs to this kernel.
        result.toolchain = select(kernel, printer=printer).description


def prepare(
    kernel: Kernel,
    sample: Sample,
    *,
    printer: Printer | None = None,
    build: Builder = build_with_requirements,
    allow_no_livepatch: bool = False,
) -> Prepared:
    """Decide applicability, then build and convert; a build failure is that module's failure.
    On a kernel without CONFIG_LIVEPATCH nothing is built unless `allow_no_livepatch`
    (then the expectation is the guard's refusal)."""
    printer = printer or Printer()
    expectation = sample.expectation(kernel)
    if kernel.config_value("LIVEPATCH") != "y" and not allow_no_livepatch:
        expectation = Expectation("not-applicable", NO_LIVEPATCH)
    if expectation.outcome == "not-applicable":
        result = ModuleResult(
            sample.name, sample.module, NA, expectation.outcome, expectation.reason
        )
        return Prepared(sample, expectation, None, result)
    try:
        built, required = build(kernel, sample, allow_no_livepatch=allow_no_livepatch)
    except HarnessError as err:
        result = ModuleResult(
            sample.name,
            sample.module,
            FAIL,
            expectation.outcome,
            f"build: {err}",
            build_failed=True,
        )
        printer.say(f"  {sample.name}: build failed: {str(err).splitlines()[0]}")
        return Prepared(sample, expectation, None, result)
    state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
    converted = " ".join(built.converted)
    printer.say(f"  {sample.name}: {state} with {built.toolchain}; converted {converted}")
    return Prepared(sample, expectation, built, None, required)


def _not_run(item: Prepared, reason: str, console_log: str) -> ModuleResult:
    built = item.built
    return ModuleResult(
        item.sample.name,
        item.sample.module,
        NOT_RUN,
        item.expectation.outcome,
        reason,
        converted=list(built.converted) if built else [],
        toolchain=built.toolchain if built else "",
        build_log=str(built.log) if built else "",
        console_log=console_log,
    )


class DuplicateKernel(Exception):
    """A spec naming a kernel that another spec of the run already runs."""


class Claims:
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
    *,
    printer: Printer | None = None,
    cpus: int | None = None,
    claims: Claims | None = None,
    max_boots: int = MAX_BOOTS,
    backend: Backend | None = None,
    allow_no_livepatch: bool = False,
) -> KernelResult:
    """One kernel's results; `DuplicateKernel` when another spec of the run has this kernel."""
    printer = printer or Printer()
    backend = backend or Backend()
    result = KernelResult(spec=spec)
    printer.say("fetching")
    try:
        kernel = backend.acquire(spec, printer)
    except HarnessError as err:
        result.error = f"kernel: {err}"
        return result
    owner = claims.claim(kernel.name, spec) if claims else None
    if owner is not None:
        raise DuplicateKernel(
            f"{spec}: is {kernel.name}, which {owner} runs already; not run twice"
        )
    describe_kernel(kernel, result, printer)
    printer.say(f"{kernel.name} ({kernel.package_version}); building {len(samples)} module(s)")
    allow = allow_no_livepatch
    prepared = [
        prepare(kernel, s, printer=printer, build=backend.build, allow_no_livepatch=allow)
        for s in samples
    ]
    results = {p.sample.name: p.result for p in prepared if p.result is not None}
    pending = [p for p in prepared if p.result is None]
    if pending:
        steps = _KernelSteps(kernel, results_dir, printer, cpus, backend.boot)
        results.update(steps.run(pending, result, max_boots))
    result.modules = [results[s.name] for s in samples if s.name in results]
    return result


class _KernelSteps:
    """Every pending step of one kernel, in boots of it: when the guest dies or hangs
    during a step, that step fails and a new boot runs the rest."""

    def __init__(
        self, kernel: Kernel, results_dir: Path, printer: Printer, cpus: int | None, boot: Booter
    ) -> None:
        self.kernel, self.results_dir, self.printer = kernel, results_dir, printer
        self.cpus, self.boot = cpus, boot

    def run(
        self, pending: list[Prepared], result: KernelResult, max_boots: int
    ) -> dict[str, ModuleResult]:
        done: dict[str, ModuleResult] = {}
        left = list(pending)
        boots = 0
        while left and boots < max_boots:
            boots += 1
            log = self.results_dir / f"console-{self.kernel.name}.log"
            try:
                with self.boot(self.kernel, log, self.cpus) as guest:
                    if boots == 1:
                        result.console_log = str(guest.console_log)
                        result.accel = str(guest.accel)
                        result.boot_seconds = round(guest.boot_seconds, 1)
                    self.printer.say(
                        f"boot {boots} under {guest.accel} in {guest.boot_seconds:.1f} s"
                    )
                    self._in_guest(GuestSteps(guest, self.kernel), left, done)
            except BootError as err:  # the boot itself failed: no point in booting again
                result.error = f"guest: {err}"
                break
        why = (
            f"not run: the guest stopped during {max_boots} steps, no boot left"
            if not result.error
            else "not run: the guest could not be booted for this step"
        )
        for item in left:
            done[item.sample.name] = _not_run(item, why, result.console_log)
        return done

    def _in_guest(
        self, steps: GuestSteps, left: list[Prepared], done: dict[str, ModuleResult]
    ) -> None:
        """Steps until none is left or the guest is lost (that step fails: boot again)."""
        if any(item.expectation.outcome == "pass" for item in left):
            steps.prefetch_kallsyms()
        while left:
            item = left.pop(0)
            assert item.built is not None
            step, transcript = steps.run(item.sample, item.expectation, item.built, item.required)
            transcript.save(transcript_file(self.results_dir, self.kernel.name, item.sample.name))
            done[item.sample.name] = step
            if transcript.crash is not None:
                self.printer.say(f"  {item.sample.name}: fail: the guest stopped during this step")
                return
            self.printer.say(f"  {step.sample}: {step.outcome} {step.reason}".rstrip())


def default_jobs() -> int:
    """Kernels run at once: a TCG guest keeps one core busy, so one per core."""
    return max(1, os.cpu_count() or 1)


def run(
    specs: Sequence[str],
    samples: Sequence[Sample],
    results_dir: Path,
    *,
    printer: Printer | None = None,
    jobs: int = 1,
    max_boots: int = MAX_BOOTS,
    backend: Backend | None = None,
    allow_no_livepatch: bool = False,
) -> RunResults:
    """Every kernel x every sample; `jobs` kernels at once. The results file is rewritten
    as each kernel finishes, with the kernels in the order given."""
    printer = printer or Printer()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = exclusive_dir(results_dir, f"run-{stamp}")  # two runs in one second: -2
    claims = Claims()
    results = RunResults(path=run_dir / "results.json")
    slots: list[KernelResult | None] = [None] * len(specs)
    lock = threading.Lock()
    # Side by side, each guest gets its share of the cores; alone, vng's default.
    cpus = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def one(index: int) -> None:
        spec = specs[index]
        start = time.monotonic()
        says = printer.for_kernel(spec)  # every line names its kernel, also with -j 1
        try:
            kernel_result = run_kernel(
                spec,
                samples,
                run_dir,
                printer=says,
                cpus=cpus,
                claims=claims,
                max_boots=max_boots,
                backend=backend,
                allow_no_livepatch=allow_no_livepatch,
            )
        except HarnessError as err:  # e.g. a malformed expectation: that kernel's failure
            kernel_result = KernelResult(spec=spec, error=str(err))
        except DuplicateKernel as dup:
            says.say(str(dup))
            return
        with lock:
            slots[index] = kernel_result
            results.kernels = [k for k in slots if k is not None]
            results.save()
        says.say(f"{spec}: done in {time.monotonic() - start:.1f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, i) for i in range(len(specs))]:
            future.result()
    return results
