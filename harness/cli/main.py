"""`klp-harness`: a thin argparse layer; each sub-command lives in its own harness/cli module.

Start-up is part of every `convert` run (a build converts many modules), so this module
imports only what every command needs: the chosen command's module is imported by name, and
the cache layer only when --cache-dir is given.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from harness import __version__
from harness.errors import HarnessError
from harness.fileio import printable_lines

# Each module has `register(subparsers)`; its parsers set `func=run(args) -> int`.
# Keyed by command so that a run imports only the module of its own command.
COMMANDS = {
    "convert": "harness.cli.convert",
    "inspect": "harness.cli.convert",
    "kernels": "harness.cli.kernels",
    "report": "harness.cli.report",
    "init-expect": "harness.cli.init_expect",
    "run": "harness.cli.run",
    "bisect": "harness.cli.bisect",
    "make": "harness.cli.make",
}

INTERNAL_ERROR = 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like every other bad input.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _modules_for(argv: list[str]) -> list[str]:
    """Only the chosen command's module when the command is plain to see; else all (help)."""
    for arg in argv:
        if arg in COMMANDS:
            return [COMMANDS[arg]]
        if not arg.startswith("-") or arg == "--cache-dir":
            break
    return list(dict.fromkeys(COMMANDS.values()))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="klp-harness",
        description="Turn references to unexported kernel symbols into klp relocations, "
        "and prove on real kernels that they resolve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="cache for kernel packages, build roots and builds "
        "(default: $KLP_HARNESS_CACHE, else $XDG_CACHE_HOME/klp-harness)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.cache_dir is not None:
        from harness.cache import set_cache_root

        set_cache_root(args.cache_dir)
    try:
        return int(args.func(args))
    except HarnessError as err:
        print(f"klp-harness: {printable_lines(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("klp-harness: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"klp-harness: {where}{err.strerror or err}", file=sys.stderr)
        return 3
    except Exception as err:  # a bug of ours: one line unless asked for the traceback
        if os.environ.get("KLP_HARNESS_DEBUG"):
            raise
        print(
            f"klp-harness: internal error: {type(err).__name__}: {err} "
            "(set KLP_HARNESS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
