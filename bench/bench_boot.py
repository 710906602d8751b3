#!/usr/bin/env python3
"""Benchmark the boot stage: time to a ready shell, per-command latency, kallsyms fetch.

Boots the kernel N times (KVM if the probe finds it working, else TCG) and prints the
median and worst of each figure.

    python bench/bench_boot.py                       # debian:bookworm, 3 boots
    python bench/bench_boot.py --kernel SPEC -n 5 --accel tcg
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.kernels.acquire import acquire
from harness.vm.boot import boot


def one_boot(spec: str, accel: str | None, out: Path, commands: int) -> dict[str, float]:
    kernel = acquire(spec)
    start = time.monotonic()
    with boot(kernel, out / "console.log", accel=accel) as guest:
        ready = time.monotonic() - start
        latencies = [guest.run("true").seconds for _ in range(commands)]
        t = time.monotonic()
        guest.kallsyms()
        kallsyms = time.monotonic() - t
        t = time.monotonic()
    close = time.monotonic() - t
    print(f"  {guest.accel}: ready {ready:.1f} s (boot_seconds {guest.boot_seconds:.1f}), "
          f"command {statistics.median(latencies) * 1000:.0f} ms, kallsyms {kallsyms:.2f} s, "
          f"close {close:.1f} s")  # fmt: skip
    return {
        "ready": ready,
        "command": statistics.median(latencies),
        "kallsyms": kallsyms,
        "close": close,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian:bookworm")
    parser.add_argument("-n", type=int, default=3, help="boots")
    parser.add_argument("--accel", choices=["kvm", "tcg"], default=None)
    parser.add_argument("--commands", type=int, default=20, help="`true` runs per boot")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="klp-bench-boot-") as tmp:
        for i in range(args.n):
            runs.append(one_boot(args.kernel, args.accel, Path(tmp) / str(i), args.commands))
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:9} median {statistics.median(values):7.3f} s   worst {max(values):7.3f} s")


if __name__ == "__main__":
    main()
