"""Module builds: kbuild out of tree against a kernel's headers, then conversion to klp relocations.

The build's product is the loadable, converted .ko. modpost's `undefined!` is only a
warning here (KBUILD_MODPOST_WARN=1) because those are the symbols being converted;
any undefined symbol that is not converted stops the build.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.build.guard import require_livepatch
from harness.build.modpost import undefined as modpost_undefined
from harness.build.sign import sign_module
from harness.build.toolchain import select
from harness.cache import cache_dir, cache_root, locked, staged_dir
from harness.errors import BuildError, HarnessError
from harness.fileio import read_regular
from harness.kernels.kernel import Kernel
from harness.kernels.sourcefiles import SourceFiles, file_position
from harness.klp.convert import ConvertReport, convert_module
from harness.klp.exports import load_exports
from harness.klp.symbols import SymbolTable
from harness.paths import BUILD_DIR, CONVERTER_DIR, INCLUDE_DIR, MODULES_DIR, PACKAGE_DIR
from harness.suite.samples import Sample, required_sample

STAMP = "klp-harness.stamp"
# Every path make sees (M=, -C, KCFLAGS) is harness-chosen and plain: make expands `$(...)`
# in command-line variables, and kbuild splits on spaces.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+~-]+")  # `~`: Debian versions
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,63}")
MAX_SOURCE_FILE = 64 * 2**20
MAX_SOURCE_FILES = 10_000
RESERVED = (STAMP, "build.log", "klp")  # what the harness writes into the build directory


@dataclass(frozen=True)
class BuiltModule:
    sample: str
    module: str
    ko: Path  # converted and loadable
    raw_ko: Path  # as kbuild made it
    log: Path
    toolchain: str
    converted: tuple[str, ...]  # ".klp.sym" names, e.g. "vmlinux.kernel_clone,0"
    left_alone: tuple[str, ...]  # undefined symbols the kernel exports
    cached: bool
    seconds: float
    fingerprint: str = ""
    # The conversion's intent, for the in-memory check (harness.suite.memcheck): each klp
    # symbol's address in the kernel's table before KASLR (None: forced or a module's), and
    # that table's `_text`, so a guest's KASLR offset can shift it.
    predicted: tuple[tuple[str, int | None], ...] = ()
    table_text: int | None = None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def build_name(sample: Sample) -> str:
    """The sample's directory name in the build cache: a plain name of modules/ as it is,
    else a sanitised one with a hash of its path (never `..`, `$(...)`, spaces or quotes;
    a user's `kernel_clone/` never shares the build of the sample of that name)."""
    if _PLAIN_NAME.fullmatch(sample.name) and sample.path.parent == MODULES_DIR.resolve():
        return sample.name
    stem = re.sub(r"[^A-Za-z0-9_+-]+", "_", sample.name).strip("_")[:40] or "module"
    where = os.fsencode(sample.path) + b"\0" + sample.name.encode()
    digest = hashlib.sha256(where).hexdigest()[:12]
    return f"{stem}-{digest}"


def source_files(root: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file to copy from a module directory, sorted.

    Only regular files and directories; a symlink is taken (its content copied) when it
    points to a regular file inside the directory. Anything else is refused with one line:
    a FIFO would hang the copy, a link out of the tree would copy host files into the cache.
    """
    top = root.resolve()
    found: list[tuple[str, Path]] = []
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            raise BuildError(
                f"{directory}: cannot list the module directory: {err.strerror}"
            ) from None
        for entry in entries:
            path = Path(entry.path)
            name = os.fspath(path.relative_to(top))
            if name in RESERVED:
                raise BuildError(f"{path}: the harness writes {name} into the build; rename it")
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                target = path.resolve()
                if not (target.is_relative_to(top) and target.is_file()):
                    raise BuildError(
                        f"{path}: a symbolic link to {target}, not to a regular file inside "
                        "the module directory"
                    )
            elif stat.S_ISDIR(mode):
                pending.append(path)
                continue
            elif not stat.S_ISREG(mode):
                raise BuildError(
                    f"{path}: not a regular file or directory; a module directory holds "
                    "only sources"
                )
            found.append((name, path))
            if len(found) > MAX_SOURCE_FILES:
                raise BuildError(f"{top}: more than {MAX_SOURCE_FILES} files")
    return sorted(found, key=lambda item: os.fsencode(item[0]))


def _read_source(path: Path) -> bytes:
    try:
        return read_regular(path, MAX_SOURCE_FILE)
    except HarnessError as err:
        raise BuildError(f"module source {err}") from None


def _copy_sources(files: list[tuple[str, Path]], work: Path) -> None:
    for name, path in files:
        dest = work / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_read_source(path))
        dest.chmod(path.stat().st_mode & 0o755 | 0o600)


def _fingerprint(
    kernel: Kernel,
    sample: Sample,
    toolchain: str,
    deps: Mapping[str, BuiltModule],
    sources: list[tuple[str, Path]],
) -> str:
    digest = hashlib.sha256()
    parts = [__version__, kernel.name, kernel.package_version, toolchain, repr(sample.convert)]
    parts += [f"{name}={dep.fingerprint}" for name, dep in sorted(deps.items())]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for name, path in sources:
        digest.update(os.fsencode(name) + b"\0" + _read_source(path) + b"\0")
    # The converter and this build stage: a change in either must redo conversions.
    files = [*sorted(INCLUDE_DIR.glob("*.h")), *sorted(CONVERTER_DIR.glob("*.py"))]
    files += sorted(BUILD_DIR.glob("*.py"))
    for path in files:
        name = path.relative_to(PACKAGE_DIR).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _symbol_data(kallsyms: Path, symvers: Path) -> tuple[SymbolTable, Mapping[str, int]]:
    # with namespaces: an export restricted to other modules is converted (harness.klp.exports)
    return SymbolTable.load(kallsyms), load_exports(symvers)


def _sympos(kernel: Kernel, symtab: SymbolTable, wanted: Mapping[str, int | str]) -> dict[str, int]:
    """Positions from expect.toml; "last" is the highest position of that name in vmlinux,
    any other string the source file that defines it (harness.kernels.sourcefiles)."""
    return {
        name: len(symtab.candidates(name))
        if pos == "last"
        else file_position(kernel, symtab, name, pos)
        if isinstance(pos, str)
        else int(pos)
        for name, pos in wanted.items()
    }


def _convert(
    kernel: Kernel,
    sample: Sample,
    raw: Path,
    out: Path,
    undefined: list[str],
    deps: Mapping[str, BuiltModule],
) -> ConvertReport:
    symtab, exports = _symbol_data(kernel.kallsyms, kernel.symvers)
    wanted = list(sample.convert.symbols)
    stray = sorted(set(undefined) - set(wanted)) if wanted else []
    if stray:
        raise BuildError(
            f"{sample.name}: modpost reports {', '.join(stray)} undefined on {kernel.name}, "
            "and expect.toml does not convert them"
        )
    return convert_module(
        raw,
        out,
        symtab=symtab,
        exports=exports,
        versions=exports,
        symbols=wanted or None,
        sympos=_sympos(kernel, symtab, sample.convert.sympos),
        sources=SourceFiles(kernel),  # KLP_SYMPOS_FILE annotations
        object_symbols={obj: deps[name].ko for obj, name in sample.convert.object_symbols.items()},
        force=sample.convert.force,
    )


def sympos_defines(positions: Mapping[str, int]) -> list[str]:
    """`-DKLP_SYMPOS_<name>=N` for each chosen position, so a module can print what it got."""
    return [f"-DKLP_SYMPOS_{re.sub(r'[^A-Za-z0-9_]', '_', n)}={p}" for n, p in positions.items()]


def _make(kernel: Kernel, workdir: Path, log: Path, defines: list[str], failed_log: Path) -> str:
    """kbuild in `workdir`; on failure the log is also kept at `failed_log`, because the
    staging dir holding `log` is removed."""
    toolchain = select(kernel)
    for path, what in (
        (workdir, "the build directory (in the cache: choose another --cache-dir)"),
        (kernel.headers, f"{kernel.name}'s headers"),
        (INCLUDE_DIR, "klp-harness's own headers (where it is installed)"),
    ):
        if not _PLAIN_PATH.fullmatch(str(path)):
            raise BuildError(
                f"{path}: kbuild needs a plain path (letters, digits, / . _ + ~ -) for {what}"
            )
    argv = [
        "make",
        "-C",
        str(kernel.headers),
        f"M={workdir}",
        "modules",
        "KBUILD_MODPOST_WARN=1",
        # modpost errors out on an export of a namespace the module does not import, and a
        # `module:` namespace (EXPORT_SYMBOL_FOR_MODULES) cannot be imported: as a warning,
        # the converter decides (converts the restricted one, warns about the other).
        "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS=y",
        " ".join([f"KCFLAGS=-I{INCLUDE_DIR}", *defines]),
    ]
    command = toolchain.command(argv, binds=[cache_root(), kernel.headers, INCLUDE_DIR, workdir])
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
    text = (
        f"$ {' '.join(command)}\n# toolchain: {toolchain.description}\n{proc.stdout}{proc.stderr}"
    )
    log.write_text(text)
    if proc.returncode != 0:
        failed_log.write_text(text)
        name = failed_log.name.removesuffix(".failed.log")
        raise BuildError(
            f"building {name} for {kernel.name} failed (log: {failed_log}):\n{_tail(text)}"
        )
    failed_log.unlink(missing_ok=True)
    return text


def _read_stamp(directory: Path) -> dict[str, str] | None:
    try:
        lines = (directory / STAMP).read_text().splitlines()
    except OSError:
        return None
    return dict(line.split("=", 1) for line in lines if "=" in line)


def build_with_requirements(
    kernel: Kernel, sample: Sample, *, allow_no_livepatch: bool = False
) -> tuple[BuiltModule, tuple[BuiltModule, ...]]:
    """`sample` and, first, the samples it requires (to load before it, or to read symbols of).
    A kernel without CONFIG_LIVEPATCH only with `allow_no_livepatch` (harness.build.guard)."""
    allow = allow_no_livepatch
    needed = list(dict.fromkeys([*sample.requires, *sample.convert.object_symbols.values()]))
    deps = {
        name: build_module(kernel, required_sample(sample, name), allow_no_livepatch=allow)
        for name in needed
    }
    built = build_module(kernel, sample, deps, allow_no_livepatch=allow)
    return built, tuple(deps[name] for name in sample.requires)


def builds_dir(kernel: Kernel) -> Path:
    """Every module build for `kernel`: the guest sees this directory, read-only."""
    return cache_dir("builds", kernel.name)


def build_module(
    kernel: Kernel,
    sample: Sample,
    deps: Mapping[str, BuiltModule] | None = None,
    *,
    allow_no_livepatch: bool = False,
) -> BuiltModule:
    """Build and convert `sample` for `kernel`, or return the cached result when nothing changed.

    `deps` holds the built samples that `sample`'s object_symbols name. A kernel without
    CONFIG_LIVEPATCH only with `allow_no_livepatch` (harness.build.guard).
    """
    require_livepatch(kernel, allow_no_livepatch)
    deps = deps or {}
    start = time.monotonic()
    toolchain = select(kernel).description
    final = builds_dir(kernel) / build_name(sample)
    sources = source_files(sample.path)
    fingerprint = _fingerprint(kernel, sample, toolchain, deps, sources)
    with locked(final):
        stamp = _read_stamp(final)
        if stamp and stamp.get("fingerprint") == fingerprint:
            return _result(sample, final, stamp, cached=True, seconds=time.monotonic() - start)
        with staged_dir(final) as work:
            # A copy under a harness-chosen name: the user's path never reaches make.
            _copy_sources(sources, work)
            log = work / "build.log"
            symtab, _ = _symbol_data(kernel.kallsyms, kernel.symvers)
            defines = sympos_defines(_sympos(kernel, symtab, sample.convert.sympos))
            failed_log = final.parent / f"{final.name}.failed.log"
            undefined = modpost_undefined(_make(kernel, work, log, defines, failed_log))
            raw = work / f"{sample.module}.ko"
            if not raw.is_file():
                raise BuildError(f"{sample.name}: kbuild made no {raw.name} (log: {log})")
            out = work / "klp" / raw.name
            out.parent.mkdir()
            report = _convert(kernel, sample, raw, out, undefined, deps)
            sign_module(kernel, out)  # CONFIG_MODULE_SIG kernels with their build key
            converted = [f"{c.obj}.{c.name},{c.sympos}" for c in report.converted]
            missing = sorted(set(undefined) - {c.referenced for c in report.converted})
            if missing:
                raise BuildError(
                    f"{sample.name}: undefined and not converted: {', '.join(missing)}"
                )
            stamp = {
                "fingerprint": fingerprint,
                "toolchain": toolchain,
                "converted": " ".join(converted),
                "left_alone": " ".join(sorted(report.left_alone)),
                "predicted": " ".join(
                    f"{c.obj}.{c.name},{c.sympos}={'-' if c.address is None else hex(c.address)}"
                    for c in report.converted
                ),
                "table_text": _table_text(symtab),
            }
            (work / STAMP).write_text("".join(f"{k}={v}\n" for k, v in stamp.items()))
    # kbuild's .cmd files still name the staging dir; only the .ko files are used from here.
    return _result(sample, final, stamp, cached=False, seconds=time.monotonic() - start)


def _result(
    sample: Sample, directory: Path, stamp: dict[str, str], *, cached: bool, seconds: float
) -> BuiltModule:
    return BuiltModule(
        sample=sample.name,
        module=sample.module,
        ko=directory / "klp" / f"{sample.module}.ko",
        raw_ko=directory / f"{sample.module}.ko",
        log=directory / "build.log",
        toolchain=stamp.get("toolchain", ""),
        converted=tuple(stamp.get("converted", "").split()),
        left_alone=tuple(stamp.get("left_alone", "").split()),
        cached=cached,
        seconds=seconds,
        fingerprint=stamp.get("fingerprint", ""),
        predicted=_predicted(stamp.get("predicted", "")),
        table_text=_hex(stamp.get("table_text", "-")),
    )


def _table_text(symtab: SymbolTable) -> str:
    found = symtab.candidates("_text")
    return hex(found[0].address) if len(found) == 1 else "-"


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:  # "-": not known; a stamp is the harness's own file
        return None


def _predicted(text: str) -> tuple[tuple[str, int | None], ...]:
    """The stamp's `predicted` line: "vmlinux.name,pos=0x..." (or "=-") per klp symbol."""
    return tuple(
        (name, _hex(address)) for name, _, address in (i.rpartition("=") for i in text.split())
    )
