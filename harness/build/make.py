"""`klp-harness make`: kbuild on a module directory as it is, then every .ko it built
converted (and signed) where kbuild put it.

The target kernel is a spec (fetched and cached by harness.kernels), a headers or build
directory, or the running kernel's `/lib/modules/<release>/build` (harness.build.target
finds a directory's symbol table). modpost's `undefined!` is a warning
(KBUILD_MODPOST_WARN=1) only so that the names it lists can be converted: a name the
target's symbol table lacks fails the build, naming it, before anything is converted.

kbuild's own output of X.ko is kept as `X.ko.unconverted` (kbuild's `make clean` removes
`*.ko.*`; `modules_install` installs only X.ko): when kbuild does not link X.ko again, the
next run converts that raw file, never the converted one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.build.guard import require_livepatch
from harness.build.modpost import restricted_by_module, undefined_by_module
from harness.build.sign import Signer, is_signed, sign, signer_for
from harness.build.target import Target
from harness.build.toolchain import select
from harness.cache import cache_root
from harness.console import Printer
from harness.errors import BuildError, UsageError
from harness.fileio import atomic_write_bytes, printable
from harness.klp.convert import ConvertedSymbol, convert_module
from harness.klp.exports import load_exports
from harness.klp.inspect import inspect_module
from harness.klp.symbols import SymbolTable
from harness.paths import INCLUDE_DIR

__all__ = ["MadeModule", "MakeResult", "make_modules"]

# make expands `$(...)` in command-line variables and kbuild splits on spaces.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+~-]+")
# Options and variables that choose what and where kbuild builds: ours to set.
_OURS = re.compile(r"^(?:-C.*|--directory(?:=.*)?|M=.*|KBUILD_EXTMOD=.*|-f.*|--file(?:=.*)?)$")
UNCONVERTED = ".unconverted"  # kbuild's X.ko kept as X.ko.unconverted
TAIL_LINES = 20


@dataclass(frozen=True)
class MadeModule:
    ko: Path  # converted (and signed) where kbuild put it
    unconverted: Path | None  # kbuild's output, None when X.ko was left as kbuild made it
    converted: tuple[ConvertedSymbol, ...]
    left_alone: tuple[str, ...]  # undefined but exported by the target
    guard: str | None  # the livepatch guard's symbol, when added
    signed: bool
    warnings: tuple[str, ...] = ()

    @property
    def relocations(self) -> int:
        return sum(c.relocations for c in self.converted)


@dataclass(frozen=True)
class MakeResult:
    target: Target
    toolchain: str
    modules: tuple[MadeModule, ...]
    log: str = field(repr=False)


def module_directory(path: Path) -> Path:
    """`path` absolute (links kept, as the user named it) and fit for kbuild's M=."""
    moddir = Path(os.path.abspath(path))
    if not moddir.is_dir():
        raise UsageError(f"{printable(moddir)}: not a directory")
    if not any((moddir / name).is_file() for name in ("Kbuild", "Makefile")):
        raise UsageError(f"{printable(moddir)}: not a module directory (no Kbuild or Makefile)")
    if not _PLAIN_PATH.fullmatch(str(moddir)):
        raise UsageError(
            f"{printable(moddir)}: kbuild needs a plain path for M= (letters, digits, "
            "/ . _ + ~ -): move the directory, or reach it through a symlink with a plain name"
        )
    return moddir


def make_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the user's make arguments, their KCFLAGS values); M=, -C and -f are refused."""
    kept: list[str] = []
    kcflags: list[str] = []
    for arg in args:
        if _OURS.match(arg):
            raise UsageError(
                f"make argument {printable(arg)!r}: klp-harness sets -C (the kernel's build "
                "directory) and M= (the module directory, -C DIR of klp-harness make)"
            )
        if arg.startswith("KCFLAGS="):
            kcflags.append(arg.removeprefix("KCFLAGS="))
        else:
            kept.append(arg)
    return kept, kcflags


def _kbuild(
    target: Target, moddir: Path, args: Sequence[str], printer: Printer, echo: bool
) -> tuple[str, str]:
    """Run `make -C <headers> M=<moddir> modules`; (its output, the toolchain's description)."""
    kernel = target.kernel
    toolchain = select(kernel, printer=printer)
    for path, what in (
        (kernel.headers, f"{kernel.name}'s build directory"),
        (INCLUDE_DIR, "klp-harness's own headers (where it is installed)"),
    ):
        if not _PLAIN_PATH.fullmatch(str(path)):
            raise BuildError(
                f"{printable(path)}: kbuild needs a plain path (letters, digits, / . _ + ~ -) "
                f"for {what}"
            )
    user, kcflags = make_arguments(args)
    argv = [
        "make",
        "-C",
        str(kernel.headers),
        f"M={moddir}",
        *user,
        "modules",
        "KBUILD_MODPOST_WARN=1",  # the undefined names are checked and converted below
        # an export restricted to other modules (7.x) only warned about: converted below
        "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS=y",
        " ".join([f"KCFLAGS=-I{INCLUDE_DIR}", *kcflags]),  # <klp_convert.h> annotations
    ]
    binds = [kernel.headers, moddir, INCLUDE_DIR]
    if kernel.headers.is_relative_to(cache_root()):
        binds.append(cache_root())  # the headers' links into the cached package root
    command = toolchain.command(argv, binds=binds)
    # modpost's output: without it, modpost runs again and lists the undefined names even
    # when nothing changed (they are what gets converted; a link alone would not list them).
    symdump = moddir / "Module.symvers"
    symdump.unlink(missing_ok=True)
    named = kernel.name if kernel.name == kernel.release else f"{kernel.name} ({kernel.release})"
    printer.say(f"building {printable(moddir)} for {named} with {toolchain.description}")
    lines: list[str] = []
    with subprocess.Popen(
        command,
        cwd=moddir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stderr.write(line)
    text = "".join(lines)
    if proc.returncode != 0:
        tail = "\n".join(text.strip().splitlines()[-TAIL_LINES:])
        raise BuildError(
            f"kbuild failed for {printable(moddir)} on {kernel.name} "
            f"(exit {proc.returncode}; -v shows all its output):\n{tail}"
        )
    if not symdump.is_file():
        raise BuildError(
            f"{printable(moddir)}: kbuild ran no modpost (no Module.symvers written), so the "
            "undefined symbols are not known; do not pass make arguments that skip it"
        )
    return text, toolchain.description


def built_modules(moddir: Path) -> list[Path]:
    """The .ko files kbuild made, from the directory's modules.order (`x.o` or `x.ko`)."""
    order = moddir / "modules.order"
    try:
        lines = order.read_text().split()
    except OSError:
        raise BuildError(f"{printable(order)}: kbuild wrote no modules.order (no obj-m?)") from None
    found: list[Path] = []
    for line in dict.fromkeys(lines):
        rel = Path(line.removesuffix(".o").removesuffix(".ko") + ".ko")
        ko = rel if rel.is_absolute() else moddir / rel
        if not ko.is_file():
            raise BuildError(f"{printable(ko)}: listed in modules.order but not built")
        found.append(ko)
    if not found:
        raise BuildError(f"{printable(order)}: kbuild built no module (no obj-m?)")
    return found


def _undefined_for(ko: Path, moddir: Path, by_module: Mapping[str, list[str]]) -> list[str]:
    """modpost names a module by its path (absolute, or relative to M=); match either."""
    names: set[str] = set()
    rel = ko.relative_to(moddir).as_posix() if ko.is_relative_to(moddir) else ko.name
    for module, found in by_module.items():
        if module == str(ko) or module == rel or module.endswith("/" + rel):
            names.update(found)
    return sorted(names)


def _is_ours(ko: Path) -> bool:
    """Converted or signed: never kbuild's own output, which has neither."""
    return is_signed(ko) or bool(inspect_module(ko))


def _stray(symtab: SymbolTable, undefined: Mapping[Path, list[str]]) -> dict[Path, list[str]]:
    """Per module, the undefined names that cannot be converted: not in the symbol table."""
    out = {ko: [n for n in names if not symtab.candidates(n)] for ko, names in undefined.items()}
    return {ko: names for ko, names in out.items() if names}


def make_modules(
    moddir: Path,
    target: Target,
    *,
    make_args: Sequence[str] = (),
    sympos: Mapping[str, int] | None = None,
    sign_key: Path | None = None,
    sign_cert: Path | None = None,
    no_sign: bool = False,
    allow_no_livepatch: bool = False,
    echo: bool = False,
    printer: Printer | None = None,
) -> MakeResult:
    """Build the modules of `moddir` for `target`, convert and (when due) sign each.
    `no_sign`: the caller signs afterwards (DKMS does, after MAKE[0]); nothing is signed."""
    printer = printer or Printer()
    kernel = target.kernel
    moddir = module_directory(moddir)
    require_livepatch(kernel, allow_no_livepatch)
    make_arguments(make_args)  # refused before anything runs
    if no_sign and (sign_key or sign_cert):
        raise UsageError("--no-sign and --sign-key/--sign-cert contradict each other")
    signer = None if no_sign else signer_for(kernel, sign_key, sign_cert)
    if signer is None and not no_sign and kernel.config_value("MODULE_SIG_FORCE") == "y":
        raise UsageError(
            f"{kernel.name} loads only signed modules (CONFIG_MODULE_SIG_FORCE) and its "
            "signing key is not at hand: give --sign-key FILE and --sign-cert FILE"
        )
    symtab = SymbolTable.load(kernel.kallsyms)
    crcs = load_exports(kernel.symvers)  # with namespaces: restricted exports are converted
    log, toolchain = _kbuild(target, moddir, make_args, printer, echo)
    by_module = undefined_by_module(log)
    for module, names in restricted_by_module(log).items():
        by_module[module] = sorted({*by_module.get(module, []), *names})
    undefined = {ko: _undefined_for(ko, moddir, by_module) for ko in built_modules(moddir)}
    stray = _stray(symtab, undefined)
    if stray:
        kept = [_set_aside(ko) for ko in stray]  # not loadable as they are: no X.ko left
        names = sorted({n for names in stray.values() for n in names})
        raise BuildError(
            f"{', '.join(ko.name for ko in stray)}: {', '.join(names)}: undefined, neither "
            f"exported by {kernel.name} nor in its symbol table, so not convertible "
            f"(kbuild's output kept as {', '.join(p.name for p in kept)})"
        )
    made = [
        _finish(ko, names, symtab, crcs, sympos or {}, signer) for ko, names in undefined.items()
    ]
    return MakeResult(target, toolchain, tuple(made), log)


def _set_aside(ko: Path) -> Path:
    raw = ko.with_name(ko.name + UNCONVERTED)
    if _is_ours(ko):
        ko.unlink()  # a converted file from an earlier run; the raw one is already kept
    else:
        os.replace(ko, raw)
    return raw


def _finish(
    ko: Path,
    undefined: list[str],
    symtab: SymbolTable,
    crcs: Mapping[str, int],
    sympos: Mapping[str, int],
    signer: Signer | None,
) -> MadeModule:
    """Convert (and sign) `ko` from kbuild's raw output; X.ko is replaced in one rename."""
    raw = ko.with_name(ko.name + UNCONVERTED)
    if _is_ours(ko):
        if not raw.is_file():
            raise BuildError(
                f"{printable(ko)}: already converted or signed, and kbuild's output "
                f"{raw.name} is gone; remove {ko.name} so that kbuild links it again"
            )
    elif undefined or signer is not None:
        atomic_write_bytes(raw, ko.read_bytes(), ko.stat().st_mode & 0o777)
    else:  # nothing to convert or sign: X.ko stays as kbuild made it
        return MadeModule(ko, None, (), (), None, False, ("nothing to convert",))
    tmp = ko.with_name(f".{ko.name}.klp.tmp")  # kbuild's clean removes `.*.tmp`
    try:
        if undefined:
            report = convert_module(
                raw,
                tmp,
                symtab=symtab,
                exports=crcs,
                symbols=undefined,  # what modpost found undefined, or exported to others only
                sympos={n: p for n, p in sympos.items() if n in undefined},
                guard=True,
                versions=crcs,
            )
            converted, left, guard = report.converted, report.left_alone, report.guard
            warnings = report.warnings
        else:
            atomic_write_bytes(tmp, raw.read_bytes(), raw.stat().st_mode & 0o777)
            converted, left, guard, warnings = (), (), None, ("nothing to convert",)
        if signer is not None:
            sign(signer, tmp)
        os.replace(tmp, ko)
    finally:
        tmp.unlink(missing_ok=True)
    return MadeModule(ko, raw, converted, left, guard, signer is not None, tuple(warnings))
