"""`klp-harness report`: results files as one kernel x module report, against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from harness.console import Printer
from harness.errors import UsageError
from harness.fileio import atomic_write_text, printable
from harness.report.model import build
from harness.report.render import FORMATS, Format, headline, render

# Exit statuses besides the common ones (2 usage, 3 unreadable file, 25 malformed results).
OK, FAILED = 0, 1
FailOn = Literal["regression", "failure", "never"]
SUFFIXES: dict[str, Format] = {
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".xml": "junit",
    ".json": "json",
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="kernel x module report of results files (md, html, junit, json)",
        description="Merge results files (results.json, or directories searched for them) into "
        "one kernel x module table, each cell pass / fail / expected failure / unexpected pass / "
        "not applicable / not run; against --baseline each cell is also a new failure "
        "(regression), fixed, still failing, never passed or new. Exit 1 when there is a "
        "regression (see --fail-on), 25 when a results file is malformed.",
    )
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="results.json file or a directory holding run-*/results.json",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        type=Path,
        metavar="RESULTS",
        help="earlier results to compare with (repeatable; merged like RESULTS)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: from -o's suffix, else md)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write here (atomically) instead of stdout",
    )
    parser.add_argument(
        "--fail-on",
        choices=get_args(FailOn),
        default="regression",
        help="exit 1 on a regression (default), on any failing cell, or never",
    )
    parser.set_defaults(func=run)


def output_format(args: argparse.Namespace) -> Format:
    if args.format:
        fmt: Format = args.format  # one of FORMATS: argparse checked it
        return fmt
    if args.output is not None:
        by_suffix = SUFFIXES.get(args.output.suffix.lower())
        if by_suffix is None:
            raise UsageError(
                f"{printable(args.output)}: cannot tell the format from the suffix; "
                "give --format md|html|junit|json"
            )
        return by_suffix
    return "md"


def run(args: argparse.Namespace, printer: Printer | None = None) -> int:
    printer = printer or Printer()
    fmt = output_format(args)
    report = build(args.results, args.baseline)
    text = render(report, fmt, args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        # a new path or a regular file is replaced atomically; /dev/stdout, /dev/null or a
        # FIFO is written through, never replaced by a regular file
        atomic_write_text(args.output, text)
        printer.say(headline(report))
        printer.say(f"report written to {args.output}")
    regressions, failures = report.regressions, report.failures
    for cell in regressions:
        # names from the results files: the printer escapes them, no line of their own
        printer.say(f"regression: {cell.sample} on {cell.kernel}: {cell.outcome}")
    fail_on: FailOn = args.fail_on
    if fail_on == "regression" and regressions:
        return FAILED
    if fail_on == "failure" and failures:
        return FAILED
    return OK
