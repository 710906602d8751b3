"""`klp-harness make [-C DIR] [target] [-- make args]`: a thin layer over harness.build.make."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from harness.cli.options import add_sympos, parse_sympos
from harness.console import Printer
from harness.errors import UsageError
from harness.fileio import printable


def register(sub: Any) -> None:
    p = sub.add_parser(
        "make",
        help="build a module directory with kbuild, convert and sign what it built",
        description="Run kbuild (make -C <kernel build dir> M=<DIR> modules) on a module "
        "directory, then turn every reference to an unexported symbol of each .ko it built "
        "into a klp relocation, in place (kbuild's output is kept as X.ko.unconverted). "
        "Target: --kernel SPEC, --kernel-dir DIR, else the running kernel's "
        "/lib/modules/$(uname -r)/build. Arguments after -- go to make (V=1, KCFLAGS=, -j).",
    )
    p.add_argument(
        "-C",
        "--directory",
        dest="moddir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the module directory (default: the current one)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kernel", metavar="SPEC", help="e.g. debian:bookworm, source:6.1:...")
    where.add_argument(
        "--kernel-dir",
        type=Path,
        metavar="DIR",
        help="a kernel headers/build directory (Makefile, .config, Module.symvers)",
    )
    p.add_argument(
        "--system-map",
        type=Path,
        metavar="FILE",
        help="the target's System.map or a saved /proc/kallsyms (not with --kernel)",
    )
    p.add_argument("--sign-key", type=Path, metavar="FILE", help="private key for sign-file")
    p.add_argument("--sign-cert", type=Path, metavar="FILE", help="its X.509 certificate")
    p.add_argument(
        "--no-sign",
        action="store_true",
        help="leave signing to the caller (DKMS signs after MAKE[0]); by default a kernel "
        "whose build key is at hand gets its modules signed with it",
    )
    add_sympos(p)
    p.add_argument(
        "--allow-no-livepatch",
        action="store_true",
        help="build for a kernel without CONFIG_LIVEPATCH (the module then refuses to load)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show kbuild and every symbol")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("make_args", nargs="*", metavar="MAKE_ARG", help="passed to make (after --)")
    p.set_defaults(func=run_make)


def _shown(path: Path) -> str:
    here = Path.cwd()
    return printable(os.path.relpath(path, here) if path.is_relative_to(here) else path)


def run_make(args: argparse.Namespace) -> int:
    from harness.build.make import make_arguments, make_modules, module_directory
    from harness.build.target import dir_target, host_target, spec_target

    printer = Printer(quiet=args.quiet)
    if args.kernel and args.system_map:
        raise UsageError("--kernel already names the symbol table; drop --system-map")
    sympos = parse_sympos(args.sympos)
    moddir = module_directory(args.moddir)
    make_arguments(args.make_args)  # refused before a kernel is fetched
    if args.kernel:
        target = spec_target(args.kernel, printer=printer)
    elif args.kernel_dir:
        target = dir_target(args.kernel_dir, system_map=args.system_map, printer=printer)
    else:
        target = host_target(system_map=args.system_map, printer=printer)
    printer.say(f"symbol table: {printable(target.table)}")
    result = make_modules(
        moddir,
        target,
        make_args=args.make_args,
        sympos=sympos,
        sign_key=args.sign_key,
        sign_cert=args.sign_cert,
        no_sign=args.no_sign,
        allow_no_livepatch=args.allow_no_livepatch,
        echo=args.verbose,
        printer=printer,
    )
    for made in result.modules:
        for warning in made.warnings:
            if warning != "nothing to convert":
                printer.warn(f"{_shown(made.ko)}: {warning}")
        notes = [f"guarded by {made.guard}"] if made.guard else []
        notes += ["signed"] if made.signed else []
        notes.append(f"for {target.kernel.release}")
        what = (
            f"converted {len(made.converted)} symbols, {made.relocations} relocations"
            if made.converted
            else "nothing to convert"
        )
        print(f"{_shown(made.ko)}: {what} ({', '.join(notes)})")
        if args.verbose:
            for c in made.converted:
                at = f" at {c.address:#018x}" if c.address is not None else ""
                print(f"  converted {printable(c.klp_name)}: {c.relocations} relocations{at}")
            for name in made.left_alone:
                print(f"  left alone {printable(name)} (exported)")
    done = {c.referenced for made in result.modules for c in made.converted}
    for name in sorted(set(sympos) - done):
        printer.warn(f"--sympos {printable(name)}: no module built here converts it; ignored")
    return 0
