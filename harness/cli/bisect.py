"""`klp-harness bisect`: the first kernel version of a suite where a module's outcome changes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.console import Printer
from harness.suite.samples import find_sample

if TYPE_CHECKING:
    from harness.suite.bisect import Step


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bisect",
        help="find the first kernel version of a suite where a module's outcome changes",
        description="List the kernel versions apt can still reach for a Debian suite and "
        "bisect them for the first one whose outcome for MODULE differs from the good "
        "version's, booting only the kernels bisection needs.",
    )
    parser.add_argument("--kernel", required=True, metavar="SPEC", help="e.g. debian:bookworm")
    parser.add_argument("--module", metavar="NAME|PATH", help="a sample or a module directory")
    parser.add_argument(
        "--good", metavar="VERSION", help="ABI or package version (default: oldest)"
    )
    parser.add_argument("--bad", metavar="VERSION", help="ABI or package version (default: newest)")
    parser.add_argument(
        "--list", action="store_true", help="only list the reachable versions, oldest first"
    )
    parser.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def _evidence(label: str, step: Step) -> list[str]:
    result = step.result
    lines = [f"{label}: {step.version.abi} ({step.version.version}): {step.outcome}"]
    if result is not None and result.reason:
        lines.append(f"  reason: {result.reason}")
    if step.kernel.error:
        lines.append(f"  kernel: {step.kernel.error.splitlines()[0]}")
    lines += [f"  {line}" for line in (result.evidence if result else [])[:8]]
    return lines


def run(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.suite.bisect import bisect, pick, reachable_versions, runner_for

    versions = reachable_versions(args.kernel)
    if args.list:
        for v in versions:
            print(f"{v.abi:32} {v.version:24} {v.suite}")
        return 0
    if not args.module:
        raise UsageError("bisect needs --module (or --list)")
    sample = find_sample(args.module)
    good, bad = pick(versions, args.good, 0), pick(versions, args.bad, -1)
    first, last = versions[good].abi, versions[bad].abi
    printer = Printer(quiet=args.quiet)
    printer.say(f"bisect: {len(versions)} versions reachable; good {first}, bad {last}")
    outcome = bisect(versions, good, bad, runner_for(sample, args.results, printer))
    booted = f"{len(outcome.tested)} kernels booted"
    print("\n".join(_evidence("good", outcome.good)))
    if outcome.bad is None:
        print(
            f"no change: {sample.name} is {outcome.good.outcome} from {first} to {last} ({booted})"
        )
        return 0
    changed = outcome.bad.version
    print("\n".join(_evidence("first bad", outcome.bad)))
    print(f"first version where {sample.name} changes: {changed.abi} ({changed.version}); {booted}")
    return 1
