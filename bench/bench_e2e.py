#!/usr/bin/env python3
"""Benchmark the whole run against plain virtme-ng boots, all measured in this one run.

  (a) a bare `vng --run <vmlinuz> --exec true` boot (the same vng options the harness uses);
  (b) the whole sample suite through klp-harness (one boot for every module), warm cache;
  (c) one bare vng boot per sample module, each doing its insmod and rmmod;
  (d) one vng boot running a plain shell script made from the same expectations: for every
      sample, the insmods of the modules it requires and its own, its checks' commands
      (livepatch waits included), the rmmods.
Prints b/a (target <= 1.3), b/d (the harness against the hand-written script, target
<= 1.2), c/b, the cold first run (empty cache: fetch, extract, symbol
table, builds) and the warm re-run overhead beyond guest time (target <= 3 s), and checks
that the warm re-run fetched and built nothing.

    python bench/bench_e2e.py [--kernel SPEC] [--skip-cold] [--repeat N]

(a), (b) and (d) alternate N times and their medians are compared: TCG boot times swing by a
factor of two on a loaded 2-core machine, so a single pair says little.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness.vm.boot
from harness.build.modules import build_with_requirements, builds_dir
from harness.console import Printer
from harness.kernels.acquire import acquire
from harness.kernels.kernel import Kernel
from harness.kernels.spec import default_spec
from harness.suite import runner
from harness.suite.samples import all_samples
from harness.vm.accel import Accel, choose_accel
from harness.vm.boot import bootable_image, vng_command, vng_environment
from harness.vm.guestroot import GUEST_SHARE, guest_path, guest_root

guest_seconds = 0.0
_real_boot = harness.vm.boot.boot


@contextlib.contextmanager
def _timed_boot(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """harness.vm.boot.boot, adding the time from vng start to qemu exit to guest_seconds."""
    global guest_seconds
    start = time.monotonic()
    try:
        with _real_boot(*args, **kwargs) as guest:
            yield guest
    finally:
        guest_seconds += time.monotonic() - start


def bare_boot(
    vmlinuz: Path,
    accel: Accel,
    share: Path,
    script: str,
    modules: Path | None = None,
) -> float:
    """Seconds of one `vng --exec script` boot. (vng exits 255 here even for `true`: what
    the guest did is checked from its files, where it matters.)"""
    cmd = [*vng_command(vmlinuz, share, accel, root=guest_root(), modules=modules)]
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--exec", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=vng_environment(cmd[0]),  # vng starts virtme-run, beside it, through the shell
    )
    if proc.returncode == 127:  # vng or virtme-run not found: no boot at all
        raise SystemExit(f"vng --exec {script!r} exited 127: {proc.stderr[-500:]}")
    return time.monotonic() - start


SCRIPT_DONE = "klp-bench: script done"


def suite_script(kernel: Kernel) -> str:
    """(d): what the suite does in the guest, as one plain script (output to a file in the
    shared dir, like the harness's): the set-up the checks rely on, then per sample the
    insmods, the checks when it loaded and should, the rmmods."""
    modules = builds_dir(kernel)
    lines = [f"cd {GUEST_SHARE}", "dmesg -n 1", "echo 0 > /proc/sys/kernel/kptr_restrict"]
    for sample in all_samples():
        expectation = sample.expectation(kernel)
        if expectation.outcome == "not-applicable":
            continue
        built, required = build_with_requirements(kernel, sample)
        for dep in required:
            lines.append(f"insmod {shlex.quote(guest_path(dep.ko, modules))}")
        lines.append(f"if insmod {shlex.quote(guest_path(built.ko, modules))}; then")
        if expectation.outcome != "refused":
            lines += [f"( {check.cmd}\n)" for check in expectation.checks]
        lines += [f"rmmod {shlex.quote(sample.module)}", "fi"]
        lines += [f"rmmod {shlex.quote(dep.module)}" for dep in reversed(required)]
    lines.append(f"echo '{SCRIPT_DONE}'")
    return "\n".join(lines) + "\n"


def script_run(kernel: Kernel, vmlinuz: Path, accel: Accel, share: Path) -> float:
    """(d) once: the script in one bare vng boot; checks that it ran to its end."""
    (share / "suite.sh").write_text(suite_script(kernel))
    out = share / "suite.out"
    out.unlink(missing_ok=True)
    run = f"sh {GUEST_SHARE}/suite.sh > {GUEST_SHARE}/suite.out 2>&1"
    seconds = bare_boot(vmlinuz, accel, share, run, builds_dir(kernel))
    if not out.is_file() or SCRIPT_DONE not in out.read_text(errors="replace"):
        raise SystemExit(f"the script variant did not run to its end: see {out}")
    return seconds


def suite_run(spec: str, results: Path) -> tuple[float, float, list[str], dict[str, float]]:
    """Wall time, guest time, progress lines and per-sample step seconds of one run."""
    global guest_seconds
    guest_seconds = 0.0
    log = io.StringIO()
    start = time.monotonic()
    outcome = runner.run([spec], all_samples(), results, printer=Printer(log, tty=False))
    wall = time.monotonic() - start
    lines = log.getvalue().splitlines()
    if not outcome.ok:
        raise SystemExit("the suite did not pass:\n" + "\n".join(lines))
    steps = {m.sample: m.seconds for m in outcome.kernels[0].modules}
    steps["(boot)"] = outcome.kernels[0].boot_seconds
    return wall, guest_seconds, lines, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=default_spec())
    parser.add_argument("--skip-cold", action="store_true", help="do not time an empty cache")
    parser.add_argument("--repeat", type=int, default=3, help="(a)/(b)/(d) rounds (default 3)")
    parser.add_argument(
        "--skip-per-module", action="store_true", help="do not time (c), a boot per module"
    )
    args = parser.parse_args()
    harness.vm.boot.boot = _timed_boot  # type: ignore[assignment]
    work = Path(tempfile.mkdtemp(prefix="klp-bench-e2e-"))

    if not args.skip_cold:
        os.environ["KLP_HARNESS_CACHE"] = str(work / "cold-cache")
        cold_wall, cold_guest, _, _ = suite_run(args.kernel, work / "cold")
        del os.environ["KLP_HARNESS_CACHE"]
        print(f"cold first run (empty cache):  {cold_wall:6.1f} s  (guest {cold_guest:.1f} s)")

    kernel = acquire(args.kernel)
    suite_run(args.kernel, work / "warmup")  # fill the real cache
    samples = all_samples()
    accel = choose_accel(kernel.vmlinuz).accel
    vmlinuz = bootable_image(kernel)
    share = work / "share"
    share.mkdir()
    bare, walls, scripts, overheads, rebuilt = [], [], [], [], []
    per_step: dict[str, list[float]] = {}
    for i in range(args.repeat):
        bare.append(bare_boot(vmlinuz, accel, share, "true"))
        wall, guest, lines, steps = suite_run(args.kernel, work / f"warm{i}")
        walls.append(wall)
        scripts.append(script_run(kernel, vmlinuz, accel, share))
        overheads.append(wall - guest)
        rebuilt += [line.strip() for line in lines if "built in" in line]
        for name, seconds in steps.items():
            per_step.setdefault(name, []).append(seconds)
    a, warm_wall = statistics.median(bare), statistics.median(walls)
    d = statistics.median(scripts)
    per_module = []
    for sample in [] if args.skip_per_module else samples:
        if sample.expectation(kernel).outcome == "not-applicable":
            continue
        built, required = build_with_requirements(kernel, sample)
        loads = [f"insmod {shlex.quote(str(m.ko))}" for m in (*required, built)]
        unloads = [f"rmmod {m.module}" for m in (built, *reversed(required))]
        per_module.append(bare_boot(vmlinuz, accel, share, "; ".join(loads + unloads)))
    c = sum(per_module)

    print(f"accelerator:                   {accel}")
    print(f"(a) bare vng boot:             {a:6.1f} s  (median of {_all(bare)})")
    print(f"(b) suite via klp-harness:     {warm_wall:6.1f} s  (median of {_all(walls)}; "
          f"{len(samples)} samples, one boot)")  # fmt: skip
    for name, times in per_step.items():
        print(f"      {name:24} {statistics.median(times):5.1f} s")
    if per_module:
        print(f"(c) one vng boot per module:   {c:6.1f} s  ({len(per_module)} boots)")
    print(f"(d) the suite as one script:   {d:6.1f} s  (median of {_all(scripts)}; one vng boot)")
    print(f"b/a = {warm_wall / a:.2f}  (target <= 1.3)")
    ratios = ", ".join(f"{w / x:.2f}" for w, x in zip(walls, scripts, strict=True))
    print(f"b/d = {warm_wall / d:.2f}  (harness / script, target <= 1.2; per round {ratios})")
    if per_module:
        print(f"c/b = {c / warm_wall:.2f}")
    overhead = statistics.median(overheads)
    print(f"warm re-run overhead beyond guest time: {overhead:.2f} s (target <= 3 s)")
    print(f"warm re-run rebuilt: {rebuilt or 'nothing'}")


def _all(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
