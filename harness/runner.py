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

from harness.build import BuiltModule, build_with_requirements
from harness.errors import BootError, HarnessError
from harness.expect import Expectation, Sample
from harness.kernel import Kernel
from harness.results import FAIL, NA, NOT_RUN, KernelResult, ModuleResult, RunResults
from harness.toolchain import select

Printer = Callable[[str], None]
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
            sample.name, sample.module, FAIL, expectation.outcome, f"build: {err}"
        )
        out(f"  {sample.name}: build failed: {str(err).splitlines()[0]}")
        return Prepared(sample, expectation, None, result)
    state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
    out(f"  {sample.name}: {state} with {built.toolchain}; converted {' '.join(built.converted)}")
    return Prepared(sample, expectation, built, None, required)


def _not_run(item: Prepared, console_log: str) -> ModuleResult:
    built = item.built
    return ModuleResult(
        item.sample.name,
        item.sample.module,
        NOT_RUN,
        item.expectation.outcome,
        "the guest died before this step",
        converted=list(built.converted) if built else [],
        toolchain=built.toolchain if built else "",
        build_log=str(built.log) if built else "",
        console_log=console_log,
    )


def run_kernel(
    spec: str,
    samples: Sequence[Sample],
    results_dir: Path,
    out: Printer,
    cpus: int | None = None,
) -> KernelResult:
    from harness.acquire import acquire
    from harness.boot import boot
    from harness.steps import run_step

    result = KernelResult(spec=spec)
    out(f"{spec}: fetching")
    try:
        kernel = acquire(spec)
    except HarnessError as err:
        result.error = f"kernel: {err}"
        return result
    describe_kernel(kernel, result)
    out(f"{spec}: {kernel.name} ({kernel.package_version}); building {len(samples)} module(s)")
    prepared = [prepare(kernel, s, out) for s in samples]
    pending = [p for p in prepared if p.result is None]
    results = {p.sample.name: p.result for p in prepared if p.result is not None}
    if pending:
        log = results_dir / f"console-{kernel.name}.log"
        result.console_log = str(log)
        try:
            with boot(kernel, log, cpus=cpus) as guest:
                result.accel, result.boot_seconds = guest.accel, round(guest.boot_seconds, 1)
                out(f"{spec}: booted under {guest.accel} in {guest.boot_seconds:.1f} s")
                for item in pending:
                    assert item.built is not None
                    step = run_step(guest, item.sample, item.expectation, item.built, item.required)
                    results[item.sample.name] = step
                    out(f"  {item.sample.name}: {step.outcome} {step.reason}".rstrip())
        except BootError as err:
            result.error = f"guest: {err}"
            for item in pending:
                if item.sample.name not in results:
                    results[item.sample.name] = _not_run(item, result.console_log)
    result.modules = [results[s.name] for s in samples if s.name in results]
    return result


def default_jobs() -> int:
    """Kernels run at once: a TCG guest keeps one core busy, so one per core."""
    return max(1, os.cpu_count() or 1)


def run(
    specs: Sequence[str],
    samples: Sequence[Sample],
    results_dir: Path,
    out: Printer = _stderr,
    jobs: int = 1,
) -> RunResults:
    """Every kernel x every sample; `jobs` kernels at once. The results file is rewritten
    as each kernel finishes, with the kernels in the order given."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = results_dir / f"run-{stamp}"
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
            kernel_result = run_kernel(spec, samples, run_dir, printer, cpus)
        except HarnessError as err:  # e.g. a malformed expectation: that kernel's failure
            kernel_result = KernelResult(spec=spec, error=str(err))
        with lock:
            slots[index] = kernel_result
            results.kernels = [k for k in slots if k is not None]
            results.save()
        printer(f"{spec}: done in {time.monotonic() - start:.1f} s")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, i) for i in range(len(specs))]:
            future.result()
    return results
