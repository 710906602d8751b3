"""`klp-harness report`: results files as one kernel x module report, against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.fileio import printable

# Exit statuses besides the common ones (2 usage, 3 unreadable file, 25 malformed results).
OK, FAILED = 0, 1
SUFFIXES = {
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
        choices=("md", "html", "junit", "json"),
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
        choices=("regression", "failure", "never"),
        default="regression",
        help="exit 1 on a regression (default), on any failing cell, or never",
    )
    parser.set_defaults(func=run)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output is not None:
        fmt = SUFFIXES.get(args.output.suffix.lower())
        if fmt is None:
            raise UsageError(
                f"{printable(args.output)}: cannot tell the format from the suffix; "
                "give --format md|html|junit|json"
            )
        return fmt
    return "md"


def run(args: argparse.Namespace) -> int:
    from harness.fileio import atomic_write_text
    from harness.report.model import build
    from harness.report.render import headline, render

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
        print(f"klp-harness: {printable(headline(report))}", file=sys.stderr)
        print(f"klp-harness: report written to {printable(args.output)}", file=sys.stderr)
    regressions, failures = report.regressions, report.failures
    for cell in regressions:
        # names from the results files: escaped, they cannot draw lines of their own
        print(
            f"klp-harness: regression: {printable(cell.sample)} on {printable(cell.kernel)}: "
            f"{printable(cell.outcome)}",
            file=sys.stderr,
        )
    if args.fail_on == "regression" and regressions:
        return FAILED
    if args.fail_on == "failure" and failures:
        return FAILED
    return OK
