#!/usr/bin/env python3
"""Check that every guest of a run ran under KVM with the kvm-clock clocksource.

    python ci/check_kvm.py RESULTS...   # results.json files or directories holding them

For every kernel that booted: results.json must say accel "kvm", and the guest's kernel log
(the console log, or the dmesg.txt saved beside it) must hold the line
"clocksource: Switched to clocksource kvm-clock". A kernel that never booted is the run's
own failure and is skipped here. Exit 0 when all hold, else 1 with one line per problem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KVM_CLOCK = "clocksource: Switched to clocksource kvm-clock"


def results_files(path: Path) -> list[Path]:
    return sorted(path.rglob("results.json")) if path.is_dir() else [path]


def _logs(console_log: str, run_dir: Path) -> list[Path]:
    """The console log and its dmesg.txt, found beside results.json or where recorded."""
    found = []
    for base in (run_dir / Path(console_log).name, Path(console_log)):
        found += [base, base.with_suffix(".files") / "dmesg.txt"]
    return [p for p in found if p.is_file()]


def problems(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    out = []
    for kernel in data["kernels"]:
        label = f"{path}: {kernel.get('name') or kernel['spec']}"
        if not kernel["accel"]:
            continue  # never booted
        if kernel["accel"] != "kvm":
            out.append(f"{label}: the guest ran under {kernel['accel']}, not kvm")
            continue
        logs = _logs(kernel["console_log"], path.parent) if kernel["console_log"] else []
        if not any(KVM_CLOCK in p.read_text(errors="replace") for p in logs):
            where = ", ".join(map(str, logs)) or "no console log or dmesg.txt found"
            out.append(f"{label}: no '{KVM_CLOCK}' in the guest's log ({where})")
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: ci/check_kvm.py RESULTS...", file=sys.stderr)
        return 2
    files = [f for arg in argv for f in results_files(Path(arg))]
    if not files:
        print("ci/check_kvm.py: no results.json found", file=sys.stderr)
        return 1
    found = [p for f in files for p in problems(f)]
    for line in found:
        print(f"ci/check_kvm.py: {line}", file=sys.stderr)
    if not found:
        print(f"ci/check_kvm.py: every guest of {len(files)} run(s) used KVM and kvm-clock")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
