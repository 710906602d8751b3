"""`klp-harness convert MODULE -o OUT` and `klp-harness inspect MODULE`: thin layers
over harness.klp.convert and harness.klp.inspect.

Every name printed comes from a file the user may not trust (a .ko, a symbol table): it is
printed escaped (fileio.printable), so a crafted symbol name cannot move the cursor or draw
a line of its own. --json needs nothing: json.dumps escapes control characters.
"""

from __future__ import annotations

import argparse
import functools
import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cli.options import add_sympos, parse_sympos
from harness.console import Printer
from harness.errors import HarnessError, UsageError
from harness.fileio import printable

if TYPE_CHECKING:
    from harness.klp.exports import Exports

VERDICT_EXIT = 1  # `inspect` found a symbol the kernel would not resolve


def register(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="turn references to unexported kernel symbols into klp relocations",
        description="Rewrite a module (<mod>.o before modpost, or .ko) so every reference to an "
        "unexported kernel symbol becomes a klp relocation the kernel (>= 5.8) resolves at load.",
    )
    p.add_argument(
        "module",
        type=Path,
        help="x86-64, AArch64 or ppc64le relocatable ELF (.o, .ko, .ko.xz, ...)",
    )
    p.add_argument("-o", "--output", type=Path, help="output file (written atomically)")
    p.add_argument("-i", "--in-place", action="store_true", help="rewrite MODULE itself")
    _target_args(p)
    p.add_argument(
        "--symvers",
        type=Path,
        metavar="FILE",
        help="the target's Module.symvers: symbols absent from it are converted",
    )
    p.add_argument(
        "--symbol",
        action="append",
        default=[],
        metavar="NAME",
        help="convert only NAME (repeatable)",
    )
    add_sympos(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="convert --symbol names even when missing from the symbol table or "
        "when the position is out of range (to provoke the kernel's own refusal)",
    )
    p.add_argument(
        "--no-livepatch-guard",
        action="store_true",
        help="do not add the reference to klp_enable_patch that makes the module refuse "
        "to load on a kernel without CONFIG_LIVEPATCH",
    )
    p.add_argument(
        "--allow-no-livepatch",
        action="store_true",
        help="convert for a --kernel without CONFIG_LIVEPATCH (the guard then refuses the load)",
    )
    _signing_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="say what was left alone")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_escaped(run_convert))

    q = sub.add_parser(
        "inspect",
        help="list klp relocations and judge them offline",
        description="List a module's klp relocations and, given the target's "
        "symbol table, say what the kernel's resolver will do with each symbol. "
        f"Exits {VERDICT_EXIT} when any symbol would not resolve.",
    )
    q.add_argument("module", type=Path)
    _target_args(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_escaped(run_inspect))


def _escaped(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Any error message escaped once more on its way out: the libraries escape what they
    take from files, and this covers any message that forgot to (idempotent).

    While the command runs the cyclic GC is paused: reading a kernel's symbol table makes
    some 100,000 tuples and lists, and the collections they trigger (rescanning all of them,
    several times over) add a third or more to the read (Debian 6.1's: 230 -> 290-350 ms);
    a conversion makes no cycles worth collecting. An embedding process gets the GC back as
    it was, after an error too."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return run(args)
        except HarnessError as err:
            err.args = (printable(err),)
            raise
        finally:
            if collecting:
                gc.enable()

    return wrapper


def _signing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strip-signature",
        action="store_true",
        help="drop the input's module signature (a signed input is refused otherwise: "
        "converting invalidates the signature)",
    )
    p.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="sign the output with this private key (PEM, or a pkcs11: URI) and --sign-cert; "
        "default: the --kernel build's own key when it checks signatures and has one",
    )
    p.add_argument("--sign-cert", type=Path, metavar="CERT", help="X.509 certificate (PEM/DER)")
    p.add_argument(
        "--sign-file",
        type=Path,
        metavar="PATH",
        help="the kernel's scripts/sign-file (default: the one of --kernel's headers)",
    )
    p.add_argument(
        "--sign-hash",
        metavar="ALGO",
        help="hash for the signature (default: the kernel's CONFIG_MODULE_SIG_HASH, or sha256)",
    )


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", metavar="SPEC", help="target kernel (e.g. debian:bookworm)")
    p.add_argument(
        "--system-map",
        type=Path,
        metavar="FILE",
        help="the target's System.map or a saved /proc/kallsyms",
    )
    p.add_argument(
        "--object-symbols",
        action="append",
        default=[],
        metavar="NAME=PATH.ko",
        help="symbols of module object NAME (livepatch modules only; repeatable)",
    )


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UsageError(f"{flag} {value!r}: expected NAME=VALUE")
        out.append((name, rest))
    return out


def _load_target(args: argparse.Namespace, need_symbols: bool) -> tuple[Any, Exports | None]:
    from harness.klp.exports import load_exports  # with namespaces (restricted exports)
    from harness.klp.symbols import SymbolTable

    system_map: Path | None = args.system_map
    symvers: Path | None = getattr(args, "symvers", None)
    if args.kernel:
        if system_map or symvers:
            raise UsageError(
                "--kernel already names the symbol table and Module.symvers; "
                "do not combine it with --system-map/--symvers"
            )
        from harness.kernels.acquire import (
            acquire,  # the kernel layer, imported only when asked for
        )

        kernel = acquire(args.kernel)
        args.target_kernel = kernel  # for signing with its build key
        if need_symbols:  # converting: a kernel without livepatch only when insisted on
            from harness.build.guard import require_livepatch

            require_livepatch(kernel, getattr(args, "allow_no_livepatch", False))
        system_map, symvers = kernel.kallsyms, kernel.symvers
    if system_map is None:
        if need_symbols:
            raise UsageError("no symbol table: give --system-map FILE or --kernel SPEC")
        return None, None
    table = SymbolTable.load(system_map)
    return table, (load_exports(symvers) if symvers else None)


def run_convert(args: argparse.Namespace) -> int:
    from harness.build.deliver import deliver, unsigned_warning
    from harness.build.sign import signer_for
    from harness.klp.convert import ConvertReport, convert_module

    if args.in_place == bool(args.output):
        raise UsageError("give exactly one of -o OUT and -i (in place)")
    if not args.symvers and not args.symbol and not args.kernel:
        raise UsageError(
            "say which symbols to convert: give --symvers FILE (convert what it "
            "does not export), --symbol NAME, or --kernel SPEC"
        )
    files: dict[str, str] = {}  # --sympos NAME@FILE
    sympos = parse_sympos(args.sympos, files)
    objects = {name: Path(p) for name, p in _pairs(args.object_symbols, "--object-symbols")}
    dst = args.module if args.in_place else args.output
    if not args.in_place and dst.exists() and dst.resolve() == args.module.resolve():
        raise UsageError(f"{printable(dst)}: output is the input; use -i to rewrite in place")
    table, exports = _load_target(args, need_symbols=True)
    kernel = getattr(args, "target_kernel", None)
    signer = signer_for(kernel, args.sign_key, args.sign_cert, args.sign_file, args.sign_hash)

    def convert(src: Path, out: Path) -> ConvertReport:
        return convert_module(
            src,
            out,
            symtab=table,
            exports=exports,
            symbols=args.symbol or None,
            sympos=sympos,
            object_symbols=objects,
            force=args.force,
            guard=not args.no_livepatch_guard,
            versions=exports,
            sympos_files=files,
            sources=_sources(kernel),
        )

    delivered = deliver(
        args.module, dst, convert, signer=signer, strip_signature=args.strip_signature
    )
    report = delivered.report
    printer = Printer()
    if signer is None and (unsigned := unsigned_warning(kernel)):
        printer.warn(unsigned)
    for warning in report.warnings:
        printer.warn(warning)
    if args.json:
        import json  # only here: start-up counts in every conversion

        print(
            json.dumps(
                {
                    "output": str(report.output),
                    "already_converted": report.already_converted,
                    "livepatch": report.livepatch,
                    "left_alone": list(report.left_alone),
                    "warnings": list(report.warnings),
                    "notes": list(report.notes),
                    "guard": report.guard,
                    "compression": delivered.compression,
                    "signed": delivered.signer is not None,
                    "stripped_signature": delivered.stripped,
                    "converted": [
                        {
                            "object": c.obj,
                            "name": c.name,
                            "sympos": c.sympos,
                            "relocations": c.relocations,
                            "address": c.address,
                            "klp_symbol": c.klp_name,
                        }
                        for c in report.converted
                    ],
                },
                indent=2,
            )
        )
        return 0
    if args.verbose:
        for note in report.notes:
            print(f"note: {note}")
        for name in report.left_alone:
            print(f"left alone: {printable(name)} (exported by the target)")
        for c in report.converted:
            where = f" at {c.address:#018x}" if c.address is not None else ""
            print(f"converted: {printable(c.klp_name)} ({c.relocations} relocations){where}")
    if report.already_converted:
        print(f"{printable(args.module)}: already converted, nothing to do")
    else:
        guard = f", guarded by {report.guard}" if report.guard else ""
        print(
            f"{printable(report.output)}: converted {len(report.converted)} symbols, "
            f"{report.relocations} relocations{guard}{_delivery(delivered)}"
        )
    return 0


def _sources(kernel: Any) -> Any:
    """The lookup of a file-based sympos: from --kernel's linked vmlinux, loaded when asked."""
    if kernel is None:
        return None
    from harness.kernels.sourcefiles import SourceFiles

    return SourceFiles(kernel)


def _delivery(delivered: Any) -> str:
    """ ", signature stripped, signed (sha256, CERT), xz-compressed": what was done around
    the conversion."""
    done = ["signature stripped"] if delivered.stripped else []
    if delivered.signer is not None:
        done.append(f"signed ({delivered.signer.hash}, {printable(delivered.signer.cert)})")
    if delivered.compression:
        done.append(f"{delivered.compression}-compressed")
    return "".join(f", {d}" for d in done)


def run_inspect(args: argparse.Namespace) -> int:
    from harness.klp.guard import GUARD_SYMBOL, module_is_guarded
    from harness.klp.inspect import format_table, inspect_module, is_livepatch_module, verdicts
    from harness.klp.symbols import module_name, module_symbols

    table, _ = _load_target(args, need_symbols=False)
    objects = _pairs(args.object_symbols, "--object-symbols")
    if objects and table is None:
        raise UsageError("--object-symbols needs --system-map or --kernel as well")
    for name, path in objects:
        table.add_object(module_name(name), module_symbols(Path(path)))
    relocs = inspect_module(args.module, table)
    judged = verdicts(relocs, table, is_livepatch_module(args.module))
    guarded = module_is_guarded(args.module)
    if args.json:
        import json

        print(
            json.dumps(
                {
                    "relocations": [r.__dict__ for r in relocs],
                    "verdicts": [v.to_json() for v in judged],
                    "livepatch_guard": guarded,
                },
                indent=2,
            )
        )
    elif not relocs:
        print(f"{printable(args.module)}: no klp relocations")
    else:
        print(format_table(relocs, judged if table is not None or judged else None))
        print(
            f"livepatch guard: {GUARD_SYMBOL} (refused at load without CONFIG_LIVEPATCH)"
            if guarded
            else "livepatch guard: none (without CONFIG_LIVEPATCH these relocations stay 0)"
        )
    return 0 if all(v.ok for v in judged) else VERDICT_EXIT
