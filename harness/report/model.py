"""The report model: results files merged into one kernel x module grid, each cell classified
against a baseline (format of the files: harness/schema/results.schema.json)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal

from harness.errors import FileReadError, ReportError
from harness.fileio import printable, read_regular
from harness.paths import SCHEMA_FILE
from harness.suite.results import (
    FAIL,
    GOOD,
    NA,
    NOT_RUN,
    OUTCOMES,
    XPASS,
    KernelResult,
    ModuleResult,
    Outcome,
)
from harness.suite.samples import Expected

REPORT_SCHEMA = "klp-harness/report/1"
# A matrix run's results.json is well under 1 MiB; refuse what cannot be one (/dev/zero).
RESULTS_LIMIT = 64 << 20
MESSAGE_MAX = 300  # of a schema error quoted in a message

# A cell's standing, judged alone: good (pass, expected failure, n/a), bad (fail, unexpected
# pass, or not run because its kernel failed), none (nothing to judge: absent from the run).
Standing = Literal["good", "bad", "none"]


class Change(StrEnum):
    """A cell against its baseline cell."""

    REGRESSION = "regression"
    FIXED = "fixed"
    STILL_FAILING = "still-failing"
    NEVER_PASSED = "never-passed"
    NEW = "new"
    UNCHANGED = "unchanged"


REGRESSION, FIXED, STILL_FAILING, NEVER_PASSED, NEW, UNCHANGED = Change
CHANGES = tuple(Change)
CHANGE_LABELS = {
    REGRESSION: "new failure",
    FIXED: "fixed",
    STILL_FAILING: "still failing",
    NEVER_PASSED: "never passed",
    NEW: "new",
    UNCHANGED: "unchanged",
}
_CLASSES: dict[tuple[Standing, Standing], Change] = {
    ("bad", "good"): REGRESSION,
    ("good", "bad"): FIXED,
    ("bad", "bad"): STILL_FAILING,
    ("bad", "none"): NEVER_PASSED,  # a failure with no earlier result is not a regression
    ("good", "none"): NEW,
    ("good", "good"): UNCHANGED,
}
NOT_IN_RUN = "not in this run"
# A kernel's details in a results file: every KernelResult field but its modules.
KERNEL_FIELDS = tuple(f.name for f in fields(KernelResult) if f.name != "modules")


@dataclass
class KernelRow(KernelResult):
    """One kernel of a results file (keyed by its spec, so a new Debian ABI still meets its
    baseline); its modules become the grid's cells instead of staying here."""

    results_file: str = ""
    started: str = ""

    @classmethod
    def of(cls, kernel: KernelResult, results_file: str, started: str) -> KernelRow:
        details = {name: getattr(kernel, name) for name in KERNEL_FIELDS}
        return cls(**details, results_file=results_file, started=started)

    @property
    def label(self) -> str:
        """The release; another architecture's is named after it (the same tree built for
        x86_64 and arm64 has one release)."""
        label = self.release or self.name or self.spec
        return f"{label} {self.arch}" if self.arch not in ("", "x86_64") else label

    @property
    def sort_key(self) -> tuple[int, tuple[int, ...], str]:
        """By release version numbers (5.10 < 6.1 < 6.12 < 7.3), unknown versions last."""
        m = re.match(r"[^\d]*(\d+(?:\.\d+)*)(?:[-+~][^\d]*(\d+))?", self.release or self.spec)
        if not m:
            return (1, (), self.spec)
        numbers = tuple(int(n) for n in m.group(1).split("."))
        build = (int(m.group(2)),) if m.group(2) else ()
        return (0, numbers + (0,) * (3 - len(numbers)) + build, self.spec)


@dataclass
class Cell:
    kernel: str  # the KernelRow's spec
    sample: str
    outcome: Outcome = NOT_RUN
    expected: Expected | Literal[""] = ""
    reason: str = NOT_IN_RUN
    seconds: float = 0.0
    evidence: list[str] = field(default_factory=list)
    module: str = ""
    console_log: str = ""
    build_log: str = ""
    kernel_failed: bool = False  # its kernel's run ended early
    in_run: bool = False  # the run has a result for this module
    change: Change | Literal[""] = ""  # "" without a baseline or when not run
    baseline_outcome: Outcome | Literal[""] = ""
    build_failed: bool = False  # not in the report's JSON (report/1 has no such key)

    @property
    def standing(self) -> Standing:
        if self.outcome in GOOD:
            return "good"
        if self.outcome in (FAIL, XPASS) or self.kernel_failed:
            return "bad"
        return "none"

    @property
    def failed(self) -> bool:
        return self.standing == "bad"


@dataclass
class Grid:
    """Kernels (sorted by version) x samples (sorted by name)."""

    kernels: list[KernelRow]
    samples: list[str]
    cells: dict[tuple[str, str], Cell]
    files: list[str]

    def cell(self, kernel: str, sample: str) -> Cell:
        return self.cells[(kernel, sample)]

    def row(self, kernel: KernelRow) -> list[Cell]:
        return [self.cells[(kernel.spec, s)] for s in self.samples]

    def all_cells(self) -> list[Cell]:
        return [c for k in self.kernels for c in self.row(k)]


@dataclass
class Report:
    grid: Grid
    baseline: Grid | None = None

    @property
    def regressions(self) -> list[Cell]:
        return [c for c in self.grid.all_cells() if c.change == REGRESSION]

    @property
    def failures(self) -> list[Cell]:
        return [c for c in self.grid.all_cells() if c.failed]

    def outcome_counts(self) -> dict[Outcome, int]:
        counts = Counter(c.outcome for c in self.grid.all_cells())
        return {o: counts[o] for o in OUTCOMES if counts[o]}

    def change_counts(self) -> dict[Change, int]:
        counts = Counter(c.change for c in self.grid.all_cells() if c.change)
        return {ch: counts[ch] for ch in CHANGES if counts[ch]}

    def to_json(self) -> dict[str, Any]:
        def kernel(k: KernelRow) -> dict[str, Any]:
            return {**k.__dict__, "cells": [cell(c) for c in self.grid.row(k)]}

        def cell(c: Cell) -> dict[str, Any]:
            data = {k: v for k, v in c.__dict__.items() if k not in ("kernel", "build_failed")}
            return {**data, "failed": c.failed}

        return {
            "schema": REPORT_SCHEMA,
            "results": self.grid.files,
            "baseline": self.baseline.files if self.baseline else None,
            "samples": self.grid.samples,
            "kernels": [kernel(k) for k in self.grid.kernels],
            "summary": {
                "outcomes": self.outcome_counts(),
                "changes": self.change_counts(),
                "failures": len(self.failures),
                "regressions": len(self.regressions),
            },
        }


# -- loading ------------------------------------------------------------------------------------


@cache
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def validation_errors(data: object) -> list[str]:
    """Every way `data` breaks the results schema, each as `at <json path>: <message>`."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"at {e.json_path}: {e.message}" for e in errors]


def results_files(path: Path) -> list[Path]:
    """A results file, or every results.json under a directory (a run dir, downloaded artifacts)."""
    if path.is_dir():
        found = sorted(path.rglob("results.json"))
        if not found:
            raise ReportError(f"{printable(path)}: no results.json in this directory")
        return found
    if not path.exists():
        raise FileReadError(f"{printable(path)}: no such file")
    return [path]


@dataclass(frozen=True)
class ResultsFile:
    path: Path
    started: str
    kernels: list[KernelResult]


def load(path: Path) -> ResultsFile:
    """One results file, parsed and validated; a ReportError names the file and the problem.
    Only a regular file of at most RESULTS_LIMIT bytes is read (a FIFO or /dev/zero is
    refused), and every text from it is escaped in messages."""
    label = printable(path)
    raw = read_regular(path, RESULTS_LIMIT, what=f"{label}: cannot read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ReportError(
            f"{label}: not a results file: not UTF-8 text (byte {raw[err.start]:#04x} at "
            f"offset {err.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{label}: not a results file: invalid JSON: {err}") from None
    except RecursionError:
        raise ReportError(f"{label}: not a results file: JSON nested too deeply") from None
    errors = validation_errors(data)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        first = printable(errors[0])  # quotes the offending value, which may be huge
        first = first if len(first) <= MESSAGE_MAX else first[: MESSAGE_MAX - 3] + "..."
        raise ReportError(f"{label}: not a klp-harness results file: {first}{more}")
    kernels = [KernelResult.from_json(k) for k in data["kernels"]]
    return ResultsFile(path, data["started"], kernels)


def _locate(recorded: str, run_dir: Path) -> str:
    """A log's file of that name beside results.json (a run dir, copied or downloaded), else
    the path as recorded on the machine that ran."""
    if not recorded:
        return recorded
    beside = run_dir / Path(recorded).name
    return str(beside) if beside.is_file() else recorded


def merge(paths: Sequence[Path]) -> Grid:
    """Results files (or directories of them) as one grid; a later file's kernel of the same
    spec replaces the earlier one's details, and its modules replace the same samples."""
    rows: dict[str, KernelRow] = {}
    modules: dict[str, dict[str, tuple[ModuleResult, Path]]] = {}
    files: list[str] = []
    for given in paths:
        for path in results_files(given):
            run = load(path)
            files.append(str(path))
            for k in run.kernels:
                row = rows[k.spec] = KernelRow.of(k, str(path), run.started)
                row.console_log = _locate(row.console_log, path.parent)
                merged = modules.setdefault(k.spec, {})
                for m in k.modules:
                    merged[m.sample] = (m, path.parent)
    samples = sorted({s for per in modules.values() for s in per})
    cells: dict[tuple[str, str], Cell] = {}
    for spec, row in rows.items():
        for sample in samples:
            cells[(spec, sample)] = _cell(row, sample, modules[spec].get(sample))
    kernels = sorted(rows.values(), key=lambda r: r.sort_key)
    return Grid(kernels, samples, cells, files)


def _cell(row: KernelRow, sample: str, found: tuple[ModuleResult, Path] | None) -> Cell:
    failed = bool(row.error)
    if found is None:
        reason = first_line(row.error) if failed else NOT_IN_RUN
        return Cell(row.spec, sample, reason=reason, kernel_failed=failed)
    m, run_dir = found
    ran = m.outcome != NA and not m.build_failed
    console = m.console_log or (row.console_log if ran else "")
    return Cell(
        kernel=row.spec,
        sample=sample,
        outcome=m.outcome,
        expected=m.expected,
        reason=m.reason,
        seconds=float(m.seconds),
        evidence=list(m.evidence),
        module=m.module,
        console_log=_locate(console, run_dir),
        build_log=m.build_log,
        kernel_failed=failed,
        in_run=True,
        build_failed=m.build_failed,
    )


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# -- comparison ---------------------------------------------------------------------------------


def classify(current: Cell, baseline: Cell | None) -> Change | Literal[""]:
    """The change, or "" when the cell has nothing to judge (not in this run)."""
    before: Standing = baseline.standing if baseline is not None else "none"
    return _CLASSES.get((current.standing, before), "")


def compare(grid: Grid, baseline: Grid | None) -> Report:
    if baseline is not None:
        for cell in grid.all_cells():
            before = baseline.cells.get((cell.kernel, cell.sample))
            cell.change = classify(cell, before)
            cell.baseline_outcome = before.outcome if before and before.in_run else ""
    return Report(grid, baseline)


def build(results: Iterable[Path], baseline: Iterable[Path] = ()) -> Report:
    base = list(baseline)
    return compare(merge(list(results)), merge(base) if base else None)
