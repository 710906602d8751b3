#!/usr/bin/env python3
"""Benchmark the matrix: source-build times, per-kernel suite time, parallel speed-up.

Prints, all from this one run:
  - the build time of each source config declared in kernels/source.toml (built now if not
    cached; a cached build prints the time its build took, from its kernel.json);
  - the suite time of each kernel of a pair, run one after the other (-j 1);
  - the same pair run two at once (-j 2) and the ratio parallel / sequential (target <= 0.6);
  - that these warm runs fetched and rebuilt nothing.

    python bench/bench_matrix.py [--pair SPEC SPEC]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from tempfile import mkdtemp

from harness.console import Printer
from harness.kernels.acquire import acquire
from harness.kernels.spec import DEFAULT_DIR, load_matrix
from harness.suite.results import RunResults
from harness.suite.runner import run
from harness.suite.samples import all_samples


def build_seconds(vmlinuz: Path) -> float | None:
    for parent in vmlinuz.parents:
        meta = parent / "kernel.json"
        if meta.is_file():
            return float(json.loads(meta.read_text())["build_seconds"])
    return None


def timed_run(specs: list[str], jobs: int, out: Path) -> tuple[float, list[str], RunResults]:
    """Wall time, progress lines and results of one run."""
    log = io.StringIO()
    start = time.monotonic()
    results = run(specs, all_samples(), out, printer=Printer(log, tty=False), jobs=jobs)
    return time.monotonic() - start, log.getvalue().splitlines(), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs=2, default=["debian:bookworm", "debian:bullseye"])
    args = parser.parse_args()
    work = Path(mkdtemp(prefix="klp-bench-matrix-"))

    print("source builds (nice make -j2, 2 cores):")
    for decl in load_matrix(DEFAULT_DIR / "source.toml"):
        start = time.monotonic()
        kernel = acquire(decl.spec, printer=Printer(quiet=True))
        took = time.monotonic() - start
        recorded = build_seconds(kernel.vmlinuz)
        state = "built now" if took > 60 else "cached"
        shown = f"{recorded / 60:5.1f} min" if recorded is not None else "   ?"
        print(f"  {decl.spec:32} {shown}  ({state}; target < 10 min)")

    pair = list(args.pair)
    timed_run(pair, 2, work / "warmup")  # fetch and build whatever is missing first
    seq, seq_lines, seq_results = timed_run(pair, 1, work / "seq")
    par, par_lines, _ = timed_run(pair, 2, work / "par")
    print("suite time per kernel (-j 1):")
    for result in seq_results.kernels:
        steps = sum(m.seconds for m in result.modules)
        print(f"  {result.name:28} boot {result.boot_seconds:5.1f} s, steps {steps:5.1f} s, "
              f"{len(result.modules)} modules")  # fmt: skip
    print(f"{' + '.join(pair)}: one after the other {seq:.1f} s, two at once {par:.1f} s")
    print(f"parallel / sequential = {par / seq:.2f} (target <= 0.6)")
    rebuilt = [line for line in seq_lines + par_lines if "built in" in line]
    print(f"warm re-runs rebuilt: {rebuilt or 'nothing'}")


if __name__ == "__main__":
    main()
