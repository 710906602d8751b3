"""Results of a run: typed outcomes, one JSON file per run (rewritten as each kernel
finishes, so a crash later keeps what finished), and the kernel x module table."""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import atomic_write_text
from harness.fileio import printable, printable_lines
from harness.suite.samples import Expected

SCHEMA = "klp-harness/results/1"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    XFAIL = "expected-failure"
    XPASS = "unexpected-pass"
    NA = "not-applicable"
    NOT_RUN = "not-run"


PASS, FAIL, XFAIL, XPASS, NA, NOT_RUN = Outcome
OUTCOMES = tuple(Outcome)
# Outcomes that leave the run green.
GOOD = frozenset({PASS, XFAIL, NA})


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of a JSON object that are fields of `cls` (newer files may carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class ModuleResult:
    sample: str
    module: str
    outcome: Outcome
    expected: Expected
    reason: str = ""
    seconds: float = 0.0
    evidence: list[str] = field(default_factory=list)  # dmesg and kallsyms lines proving it
    converted: list[str] = field(default_factory=list)
    toolchain: str = ""
    build_log: str = ""
    console_log: str = ""  # the console log of the boot this module ran in
    build_failed: bool = False  # the module never reached a guest: its build or conversion failed
    memory: str = ""  # the in-memory verification's summary (harness.suite.memcheck)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModuleResult:
        known = _known(cls, data)
        known["outcome"] = Outcome(known["outcome"])
        # Files written before the field existed marked a build failure in the reason only.
        known.setdefault("build_failed", str(known.get("reason", "")).startswith("build:"))
        return cls(**known)


@dataclass
class KernelResult:
    spec: str
    name: str = ""
    release: str = ""
    package_version: str = ""
    packages: list[str] = field(default_factory=list)
    arch: str = ""  # what the kernel runs on: x86_64, arm64 (kernels/arches/arches.toml)
    config: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""  # "sha256:<hex>" of the kernel's .config
    toolchain: str = ""  # what built the modules for this kernel
    accel: str = ""
    boot_seconds: float = 0.0
    console_log: str = ""
    error: str = ""  # why the kernel's run ended early (fetch, boot, guest death)
    modules: list[ModuleResult] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelResult:
        known = _known(cls, data)
        known["modules"] = [ModuleResult.from_json(m) for m in data.get("modules", [])]
        return cls(**known)


@dataclass
class RunResults:
    path: Path
    kernels: list[KernelResult] = field(default_factory=list)
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "harness_version": __version__,
            "started": self.started,
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "kernels": [asdict(k) for k in self.kernels],
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")

    @property
    def ok(self) -> bool:
        return all(not k.error and all(m.outcome in GOOD for m in k.modules) for k in self.kernels)


def format_table(results: RunResults) -> str:
    """Kernel x module, each cell an outcome; failures followed by their reasons (which
    quote guest output: escaped, so no guest can draw a line of its own)."""
    samples: list[str] = []
    for kernel in results.kernels:
        samples += [m.sample for m in kernel.modules if m.sample not in samples]
    header = ["kernel", *samples]
    rows = []
    notes = []
    for kernel in results.kernels:
        cells = {m.sample: m for m in kernel.modules}
        label = kernel.name or kernel.spec
        row = [label]
        for sample in samples:
            result = cells.get(sample)
            row.append(result.outcome if result else NOT_RUN)
            if result and result.outcome not in (PASS, NA):
                notes.append(printable(f"{label} / {sample}: {result.outcome}: {result.reason}"))
        if kernel.error:  # several lines: a console tail after the cause
            notes.append(printable_lines(f"{label}: {kernel.error}"))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + (["", *notes] if notes else []))
