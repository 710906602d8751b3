#!/usr/bin/env python3
"""Convert the world: every module of a cached Debian kernel, all its references to vmlinux
turned into klp relocations (vmlinux's exports treated as unexported; other modules' exports
left alone), each checked by the independent loader oracle of tests/oracle/.

Prints modules converted, relocations moved, images identical, every difference (explained by
the allow-list of tests/oracle/allowed.py or not), converter refusals grouped by reason, and
the throughput: modules/s, relocations/s and peak RSS, measured in this one run (one process).

    python bench/bench_world.py                                  # debian:bookworm (6.1)
    python bench/bench_world.py --kernel debian:trixie-backports # a 7.x kernel
    python bench/bench_world.py --limit 200 --json out.json

The kernel must be in the cache (`klp-harness kernels fetch SPEC`); KLP_HARNESS_CACHE selects it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracle.allowed import explain
from oracle.loader import KernelTable
from oracle.world import WorldResult, run_world

from harness.errors import HarnessError
from harness.kernels.acquire import cached


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(result: WorldResult, table: KernelTable, rss: float) -> dict[str, object]:
    explained: Counter[str] = Counter()
    unexplained: list[str] = []
    for name, diff in result.differences():
        reason = explain(diff, table)
        if reason is None:
            unexplained.append(f"{name}: {diff.kind}: {diff.detail}")
        else:
            explained[f"{diff.kind}: {reason}"] += 1
    return {
        "kernel": result.kernel,
        "modules": result.modules,
        "modules_converted": result.converted,
        "modules_nothing_to_convert": [
            o.name for o in result.outcomes if o.failure is None and not o.relocations
        ],
        "relocations_moved": result.relocations,
        "klp_relocations_applied_by_oracle": result.klp_applied,
        "images_identical": result.identical,
        "differences_explained": dict(explained),
        "differences_unexplained": unexplained,
        "convert_failures": {k: len(v) for k, v in result.failures().items()},
        "convert_failure_examples": {k: v[:3] for k, v in result.failures().items()},
        "seconds": round(result.seconds, 2),
        "convert_seconds": round(result.convert_seconds, 2),
        "check_seconds": round(result.check_seconds, 2),
        "modules_per_second": round(result.modules / result.seconds, 1),
        "relocations_per_second": round(result.relocations / result.seconds),
        "peak_rss_mib": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--kernel", default="debian:bookworm", help="a cached kernel spec")
    ap.add_argument("--limit", type=int, help="only the first N modules (sorted by path)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    try:
        kernel = cached(args.kernel)
    except HarnessError as err:
        print(f"bench_world: {err}", file=sys.stderr)
        return 1
    if kernel is None:
        print(
            f"bench_world: {args.kernel} is not cached: run "
            f"`klp-harness kernels fetch {args.kernel}` first",
            file=sys.stderr,
        )
        return 1

    def progress(n: int, total: int) -> None:
        if n % 250 == 0 or n == total:
            print(f"  {n}/{total} modules", file=sys.stderr, flush=True)

    result = run_world(kernel, args.limit, progress)
    table = KernelTable(kernel.kallsyms.read_text(errors="surrogateescape"))
    figures = summary(result, table, peak_rss_mib())
    for key, value in figures.items():
        if isinstance(value, dict | list):
            print(f"{key}:")
            items = value.items() if isinstance(value, dict) else enumerate(value, 1)
            for k, v in items:
                print(f"  {v}  {k}" if isinstance(value, dict) else f"  {v}")
        else:
            print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if not figures["differences_unexplained"] else 1


if __name__ == "__main__":
    sys.exit(main())
