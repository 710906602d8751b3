"""`klp-harness report`: merging, version order, classification against a baseline, exit status."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from harness.cli import report
from harness.cli.main import build_parser, main
from harness.console import Printer
from harness.report.model import (
    FIXED,
    NEVER_PASSED,
    NEW,
    REGRESSION,
    STILL_FAILING,
    UNCHANGED,
    Cell,
    KernelRow,
    build,
    classify,
    merge,
)
from harness.suite.results import NOT_RUN, PASS, Outcome

DATA = Path(__file__).parent / "data" / "results"
BOOKWORM, REGRESSED = DATA / "bookworm", DATA / "bookworm-regressed"
MULTI, DIED = DATA / "multi", DATA / "guest-died"
SPEC = "debian:bookworm"


def test_kernels_sorted_by_version() -> None:
    grid = merge([BOOKWORM, MULTI])
    versions = [re.split("[-+]", k.release)[0] for k in grid.kernels]
    assert versions == ["5.10.0", "6.1.0", "6.12.117", "7.3.4"]


@pytest.mark.parametrize(
    "releases",
    [
        ["5.10.0-46-amd64", "6.1.0-56-amd64", "6.12.117+deb13-amd64", "7.3.4+deb13-amd64"],
        ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-cloud-amd64"],
        ["4.19.0-27-amd64", "5.4", "5.10.0-0.deb10.30-amd64"],
    ],
)
def test_version_key_orders_numerically(releases: list[str]) -> None:
    rows = [KernelRow(spec=f"debian:{r}", release=r) for r in releases]
    assert sorted(reversed(rows), key=lambda r: r.sort_key) == rows


def test_unknown_versions_sort_last_and_specs_count() -> None:
    rows = [
        KernelRow(spec="debian:sid"),
        KernelRow(spec="source:6.12:livepatch"),
        KernelRow(spec="debian:6.1.0-47-amd64"),
    ]
    assert [r.spec for r in sorted(rows, key=lambda r: r.sort_key)] == [
        "debian:6.1.0-47-amd64",
        "source:6.12:livepatch",
        "debian:sid",
    ]


def test_merge_fills_every_cell() -> None:
    grid = merge([BOOKWORM, MULTI])
    assert len(grid.samples) == 10
    assert len(grid.all_cells()) == 4 * 10
    cell = grid.cell("debian:bullseye", "kernel_clone")  # not in that run
    assert (cell.outcome, cell.in_run, cell.failed, cell.reason) == (
        "not-run",
        False,
        False,
        "not in this run",
    )
    sympos = grid.cell("debian:bullseye", "sympos_2")
    assert sympos.outcome == "pass" and sympos.evidence and sympos.seconds > 0


def test_console_log_found_beside_results() -> None:
    """Recorded paths point at the machine that ran; the log beside results.json is used."""
    cell = merge([BOOKWORM]).cell(SPEC, "kernel_clone")
    assert Path(cell.console_log) == BOOKWORM / "console-debian-6.1.0-56-amd64.log"
    na_or_build = merge([BOOKWORM]).kernels[0]
    assert Path(na_or_build.console_log).is_file()


def test_later_file_wins_for_the_same_kernel() -> None:
    grid = merge([BOOKWORM, REGRESSED])
    assert grid.cell(SPEC, "kernel_clone").outcome == "fail"
    grid = merge([REGRESSED, BOOKWORM])
    assert grid.cell(SPEC, "kernel_clone").outcome == "pass"
    assert grid.cell(SPEC, "new_sample").outcome == "fail"  # only the earlier file has it


def test_regressions_against_baseline() -> None:
    report = build([REGRESSED], [BOOKWORM])
    changes = {c.sample: c.change for c in report.grid.all_cells()}
    assert changes["kernel_clone"] == REGRESSION
    assert changes["symbol_missing"] == REGRESSION  # unexpected pass, was expected failure
    assert changes["new_sample"] == NEVER_PASSED  # a failure with no earlier result
    assert changes["sympos_2"] == UNCHANGED
    assert {c.sample for c in report.regressions} == {"kernel_clone", "symbol_missing"}
    clone = report.grid.cell(SPEC, "kernel_clone")
    assert clone.baseline_outcome == "pass"


def test_fixed_against_a_failing_baseline() -> None:
    report = build([BOOKWORM], [REGRESSED])
    changes = {c.sample: c.change for c in report.grid.all_cells()}
    assert changes["kernel_clone"] == FIXED
    assert changes["symbol_missing"] == FIXED
    assert "new_sample" not in changes  # not a sample of this run
    assert report.regressions == []


def test_still_failing() -> None:
    report = build([REGRESSED], [REGRESSED])
    assert report.grid.cell(SPEC, "kernel_clone").change == STILL_FAILING
    assert report.grid.cell(SPEC, "new_sample").change == STILL_FAILING
    assert report.regressions == []


def test_new_kernels_are_new_not_regressions() -> None:
    report = build([MULTI], [BOOKWORM])
    cell = report.grid.cell("debian:bullseye", "sympos_2")
    assert cell.change == NEW
    assert report.regressions == []


def test_guest_death_is_a_regression() -> None:
    report = build([DIED], [BOOKWORM])
    cell = report.grid.cell(SPEC, "kernel_clone")
    assert cell.outcome == "not-run" and cell.failed and cell.change == REGRESSION
    assert report.grid.kernels[0].error.startswith("guest:")


@pytest.mark.parametrize(
    ("now", "before", "expected"),
    [
        ("pass", "pass", UNCHANGED),
        ("fail", "pass", REGRESSION),
        ("unexpected-pass", "expected-failure", REGRESSION),
        ("fail", "not-applicable", REGRESSION),
        ("pass", "fail", FIXED),
        ("fail", "fail", STILL_FAILING),
        ("fail", None, NEVER_PASSED),
        ("fail", "not-run", NEVER_PASSED),  # not run, with no kernel error: no result
        ("pass", None, NEW),
        ("not-run", "pass", ""),
    ],
)
def test_classify(now: str, before: str | None, expected: str) -> None:
    base = Cell("k", "s", outcome=Outcome(before), in_run=True) if before else None
    assert classify(Cell("k", "s", outcome=Outcome(now), in_run=True), base) == expected


def test_kernel_failure_counts_as_failure_in_baseline() -> None:
    died = Cell("k", "s", outcome=NOT_RUN, kernel_failed=True, in_run=True)
    assert classify(Cell("k", "s", outcome=PASS), died) == FIXED
    assert classify(died, Cell("k", "s", outcome=PASS)) == REGRESSION


# -- the command --------------------------------------------------------------------------------


def test_exit_1_on_regression(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(REGRESSED), "--baseline", str(BOOKWORM)]) == 1
    out, err = capsys.readouterr()
    assert "regression: kernel_clone on debian:bookworm: fail" in err
    assert out.startswith("## klp-harness report: 2 regression(s)")


def test_exit_0_without_regression() -> None:
    assert main(["report", str(BOOKWORM), "--baseline", str(REGRESSED)]) == 0
    assert main(["report", str(REGRESSED)]) == 0  # failures, but no baseline: no regression


def test_fail_on() -> None:
    assert main(["report", str(REGRESSED), "--fail-on", "failure"]) == 1
    assert main(["report", str(BOOKWORM), "--fail-on", "failure"]) == 0
    assert main(["report", str(REGRESSED), "--baseline", str(BOOKWORM), "--fail-on", "never"]) == 0


@pytest.mark.parametrize(
    ("name", "fmt"), [("r.md", "md"), ("r.html", "html"), ("r.xml", "junit"), ("r.json", "json")]
)
def test_output_format_from_suffix(tmp_path: Path, name: str, fmt: str) -> None:
    out = tmp_path / "sub" / name
    assert main(["report", str(BOOKWORM), "-o", str(out)]) == 0
    text = out.read_text()
    assert {"md": "## klp-harness", "html": "<!DOCTYPE html>", "junit": "<?xml", "json": "{"}[
        fmt
    ] in text[:40]
    assert [p.name for p in out.parent.iterdir()] == [name]  # atomic: no temp file left


def test_unknown_suffix_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(BOOKWORM), "-o", str(tmp_path / "r.txt")]) == 2
    assert "--format" in capsys.readouterr().err
    assert not (tmp_path / "r.txt").exists()


def test_directory_of_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(DATA), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["results"]) == 4
    assert [k["spec"] for k in data["kernels"]] == [
        "debian:bullseye",
        "debian:bookworm",
        "debian:trixie",
        "debian:trixie-backports",
    ]


def test_lines_go_through_the_printer(tmp_path: Path) -> None:
    """Progress and regressions go to the printer given, escaped: a sample name from a
    results file cannot move the cursor or start a line of its own."""
    hostile = "kernel_clone\x1b[2K\rklp-harness: all good"
    for name, source in (("now", REGRESSED), ("before", BOOKWORM)):
        data = json.loads((source / "results.json").read_text())
        clone = next(m for m in data["kernels"][0]["modules"] if m["sample"] == "kernel_clone")
        clone["sample"] = hostile
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
    out = tmp_path / "r.md"
    argv = ["report", str(tmp_path / "now"), "--baseline", str(tmp_path / "before"), "-o", str(out)]
    stream = io.StringIO()
    assert report.run(build_parser(argv).parse_args(argv), Printer(stream, tty=False)) == 1
    lines = stream.getvalue().splitlines()
    assert lines[1:] == [
        f"klp-harness: report written to {out}",
        "klp-harness: regression: kernel_clone\\x1b[2K\\rklp-harness: all good on "
        "debian:bookworm: fail",
        "klp-harness: regression: symbol_missing on debian:bookworm: unexpected-pass",
    ]
    quiet = io.StringIO()
    assert report.run(build_parser(argv).parse_args(argv), Printer(quiet, quiet=True)) == 1
    assert quiet.getvalue() == ""
