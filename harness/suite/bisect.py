"""Bisect a Debian suite's kernel versions for the first one where a module's outcome changes.

The versions are the kernel ABIs apt can still reach for the suite (several stay in the
index: each ABI is its own package), in package-version order, restricted to the series
(x.y) of the suite's current kernel so the history is linear. Only the kernels bisection
needs are fetched, built for and booted.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.console import Printer
from harness.errors import KernelError, UsageError
from harness.kernels.spec import parse_spec
from harness.suite.results import KernelResult, ModuleResult, Outcome
from harness.suite.samples import Sample

_IMAGE = re.compile(r"linux-image-(?P<abi>\d+\.\d+\S*?)-(?P<flavour>[a-z]+-amd64|amd64)$")


@dataclass(frozen=True)
class KernelVersion:
    abi: str  # "6.1.0-47-amd64"
    version: str  # package version "6.1.170-3"
    suite: str  # where apt sees it, e.g. "bookworm-security"

    @property
    def spec(self) -> str:
        return f"debian:{self.abi}"

    @property
    def series(self) -> str:
        return ".".join(self.version.split(".")[:2])


def compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg's own comparison)."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode
    return -1 if lt == 0 else 1


def _suite_family(spec_text: str) -> set[str]:
    spec = parse_spec(spec_text)
    if spec.kind != "debian-suite":
        raise UsageError(f"{spec_text}: bisect takes a suite spec such as debian:bookworm")
    return set(spec.suite_priorities()) - ({spec.release} if spec.backports else set())


def parse_madison(text: str, family: set[str], flavour: str) -> list[KernelVersion]:
    """`apt-cache madison` lines of linux-image-<abi> packages, kept when in `family`."""
    found: dict[str, KernelVersion] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3:
            continue
        m = _IMAGE.fullmatch(parts[0])
        where = parts[2].split()
        suite = where[1].split("/")[0] if len(where) > 1 else ""
        if m and m.group("flavour") == flavour and suite in family:
            abi = f"{m.group('abi')}-{flavour}"
            found.setdefault(abi, KernelVersion(abi, parts[1], suite))
    return list(found.values())


def reachable_versions(spec_text: str) -> list[KernelVersion]:
    """Every ABI of the suite's kernel series that apt can still fetch, oldest first."""
    from harness.kernels.apt import apt_root
    from harness.kernels.arch import find_arch
    from harness.kernels.resolve import resolve

    family = _suite_family(spec_text)
    spec = parse_spec(spec_text)
    flavour = spec.flavour
    current = resolve(spec_text)
    apt = apt_root(arch=find_arch(spec.arch).debian)
    names = subprocess.run(
        ["apt-cache", *apt.options(), "pkgnames", "linux-image-"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    images = sorted(n for n in names if (m := _IMAGE.fullmatch(n)) and m["flavour"] == flavour)
    madison = subprocess.run(
        ["apt-cache", *apt.options(), "madison", *images],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    series = ".".join(current.version.split(".")[:2])
    versions = [v for v in parse_madison(madison, family, flavour) if v.series == series]
    if not versions:
        raise KernelError(f"{spec_text}: apt reaches no kernel of series {series}")
    key = functools.cmp_to_key(compare_versions)
    return sorted(versions, key=lambda v: key(v.version))


def pick(versions: Sequence[KernelVersion], wanted: str | None, default: int) -> int:
    """Index of the version named by ABI or package version (default: `default`)."""
    if wanted is None:
        return default % len(versions)
    for i, v in enumerate(versions):
        if wanted in (v.abi, v.version, v.spec):
            return i
    known = ", ".join(v.abi for v in versions)
    raise UsageError(f"{wanted}: not a reachable version of this suite ({known})")


KERNEL_ERROR: Literal["kernel-error"] = (
    "kernel-error"  # the kernel could not be fetched, built for or booted
)
Verdict = Outcome | Literal["kernel-error"]


@dataclass(frozen=True)
class Step:
    version: KernelVersion
    outcome: Verdict  # the module's outcome, or KERNEL_ERROR
    result: ModuleResult | None
    kernel: KernelResult


@dataclass(frozen=True)
class BisectResult:
    good: Step  # last version with the good outcome
    bad: Step | None  # first version whose outcome differs; None: no change up to --bad
    tested: tuple[Step, ...]


Runner = Callable[[KernelVersion], Step]


def bisect(versions: Sequence[KernelVersion], good: int, bad: int, test: Runner) -> BisectResult:
    """First version after `good` whose outcome differs from good's, testing O(log n) of them."""
    if good >= bad:
        raise UsageError("the good version must be older than the bad one")
    tested = [test(versions[good]), test(versions[bad])]
    lo, hi = tested
    if hi.outcome == lo.outcome:
        return BisectResult(lo, None, tuple(tested))
    low, high = good, bad
    while high - low > 1:
        mid = (low + high) // 2
        step = test(versions[mid])
        tested.append(step)
        if step.outcome == lo.outcome:
            low, lo = mid, step
        else:
            high, hi = mid, step
    return BisectResult(lo, hi, tuple(tested))


def runner_for(sample: Sample, results_dir: Path, printer: Printer | None = None) -> Runner:
    """Boot one kernel version with `sample` (and what it requires): that version's Step."""
    from harness.suite.runner import run_kernel

    printer = printer or Printer()

    def test(version: KernelVersion) -> Step:
        printer.say(f"bisect: testing {version.abi} ({version.version})")
        where = results_dir / version.abi
        kernel = run_kernel(version.spec, [sample], where, printer=printer)
        result = next((m for m in kernel.modules if m.sample == sample.name), None)
        outcome: Verdict = result.outcome if result and not kernel.error else KERNEL_ERROR
        printer.say(f"bisect: {version.abi}: {outcome}")
        return Step(version, outcome, result, kernel)

    return test
