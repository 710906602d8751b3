"""Options that several commands share, parsed one way."""

from __future__ import annotations

import argparse

from harness.errors import UsageError
from harness.fileio import printable


def add_sympos(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sympos",
        action="append",
        default=[],
        metavar="NAME=N",
        help="kallsyms position of NAME (1-based; 0 = must be unique)",
    )


def parse_sympos(values: list[str]) -> dict[str, int]:
    """`--sympos NAME=N` values as {NAME: N}; one clear line for anything else."""
    out: dict[str, int] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name or not text.isdigit():
            raise UsageError(
                f"--sympos {printable(value)}: expected NAME=N, the position a number >= 0"
            )
        out[name] = int(text)
    return out
