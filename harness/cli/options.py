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
        metavar="NAME=N|NAME@FILE",
        help="kallsyms position of NAME (1-based; 0 = must be unique), or the NAME that source "
        "FILE defines (e.g. init_once@fs/inode.c), found in the kernel's linked vmlinux",
    )


def parse_sympos(values: list[str], files: dict[str, str] | None = None) -> dict[str, int]:
    """`--sympos NAME=N` values as {NAME: N}; `NAME@FILE` values go into `files` ({NAME: FILE})
    when the command takes them. One clear line for anything else."""
    out: dict[str, int] = {}
    for value in values:
        name, sep, text = value.partition("=")
        at_name, at, file = value.partition("@")
        if at and at_name and file and (not sep or len(at_name) < len(name)):
            if files is None:
                raise UsageError(
                    f"--sympos {printable(value)}: a source file is not taken here; give NAME=N"
                )
            files[at_name] = file
            continue
        if not sep or not name or not text.isdigit():
            raise UsageError(
                f"--sympos {printable(value)}: expected NAME=N (the position a number >= 0) "
                "or NAME@FILE"
            )
        out[name] = int(text)
    return out
