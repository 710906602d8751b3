"""Module builds: kbuild out of tree against a kernel's headers, then conversion to klp relocations.

The build's product is the loadable, converted .ko. modpost's `undefined!` is only a
warning here (KBUILD_MODPOST_WARN=1) because those are the symbols being converted;
any undefined symbol that is not converted stops the build.
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness import __version__
from harness.cache import cache_dir, cache_root, locked, staged_dir
from harness.convert import ConvertReport, convert_module
from harness.errors import BuildError
from harness.expect import Sample, required_sample
from harness.kernel import Kernel
from harness.sign import sign_module
from harness.symbols import SymbolTable, load_symvers
from harness.toolchain import select

INCLUDE_DIR = Path(__file__).resolve().parent / "include"
_UNDEFINED = re.compile(r'(?:WARNING|ERROR): modpost: "([^"]+)" \[[^\]]+\] undefined!')
STAMP = "klp-harness.stamp"


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


def modpost_undefined(log_text: str) -> list[str]:
    """The symbols modpost reported as `undefined!` (neither in the module nor exported)."""
    return sorted(set(_UNDEFINED.findall(log_text)))


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _fingerprint(
    kernel: Kernel, sample: Sample, toolchain: str, deps: Mapping[str, BuiltModule]
) -> str:
    digest = hashlib.sha256()
    parts = [__version__, kernel.name, kernel.package_version, toolchain, repr(sample.convert)]
    parts += [f"{name}={dep.fingerprint}" for name, dep in sorted(deps.items())]
    for part in parts:
        digest.update(part.encode() + b"\0")
    files = sorted(p for p in sample.path.rglob("*") if p.is_file())
    files += sorted(INCLUDE_DIR.glob("*.h"))
    # The harness's own sources (the converter among them): a change must redo conversions.
    files += sorted(Path(__file__).resolve().parent.glob("*.py"))
    for path in files:
        digest.update(str(path.name).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _symbol_data(kallsyms: Path, symvers: Path) -> tuple[SymbolTable, frozenset[str]]:
    return SymbolTable.load(kallsyms), frozenset(load_symvers(symvers))


def _sympos(symtab: SymbolTable, wanted: Mapping[str, int | str]) -> dict[str, int]:
    """Positions from expect.toml; "last" is the highest position of that name in vmlinux."""
    return {
        name: len(symtab.candidates(name)) if pos == "last" else int(pos)
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
        exports=set(exports),
        symbols=wanted or None,
        sympos=_sympos(symtab, sample.convert.sympos),
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
    argv = [
        "make",
        "-C",
        str(kernel.headers),
        f"M={workdir}",
        "modules",
        "KBUILD_MODPOST_WARN=1",
        " ".join([f"KCFLAGS=-I{INCLUDE_DIR}", *defines]),
    ]
    command = toolchain.command(argv, binds=[cache_root(), INCLUDE_DIR, workdir])
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
    text = (
        f"$ {' '.join(command)}\n# toolchain: {toolchain.description}\n{proc.stdout}{proc.stderr}"
    )
    log.write_text(text)
    if proc.returncode != 0:
        failed_log.write_text(text)
        raise BuildError(
            f"building {failed_log.stem} for {kernel.name} failed (log: {failed_log}):\n"
            f"{_tail(text)}"
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
    kernel: Kernel, sample: Sample
) -> tuple[BuiltModule, tuple[BuiltModule, ...]]:
    """`sample` and, first, the samples it requires (to load before it, or to read symbols of)."""
    needed = list(dict.fromkeys([*sample.requires, *sample.convert.object_symbols.values()]))
    deps = {name: build_module(kernel, required_sample(sample, name)) for name in needed}
    built = build_module(kernel, sample, deps)
    return built, tuple(deps[name] for name in sample.requires)


def build_module(
    kernel: Kernel, sample: Sample, deps: Mapping[str, BuiltModule] | None = None
) -> BuiltModule:
    """Build and convert `sample` for `kernel`, or return the cached result when nothing changed.

    `deps` holds the built samples that `sample`'s object_symbols name.
    """
    deps = deps or {}
    start = time.monotonic()
    toolchain = select(kernel).description
    final = cache_dir("builds", kernel.name) / sample.name
    fingerprint = _fingerprint(kernel, sample, toolchain, deps)
    with locked(final):
        stamp = _read_stamp(final)
        if stamp and stamp.get("fingerprint") == fingerprint:
            return _result(sample, final, stamp, cached=True, seconds=time.monotonic() - start)
        with staged_dir(final) as work:
            shutil.copytree(sample.path, work, dirs_exist_ok=True)
            log = work / "build.log"
            symtab, _ = _symbol_data(kernel.kallsyms, kernel.symvers)
            defines = sympos_defines(_sympos(symtab, sample.convert.sympos))
            failed_log = final.parent / f"{sample.name}.failed.log"
            undefined = modpost_undefined(_make(kernel, work, log, defines, failed_log))
            raw = work / f"{sample.module}.ko"
            if not raw.is_file():
                raise BuildError(f"{sample.name}: kbuild made no {raw.name} (log: {log})")
            out = work / "klp" / raw.name
            out.parent.mkdir()
            report = _convert(kernel, sample, raw, out, undefined, deps)
            sign_module(kernel, out)  # CONFIG_MODULE_SIG kernels with their build key
            converted = [f"{c.obj}.{c.name},{c.sympos}" for c in report.converted]
            missing = sorted(set(undefined) - {c.name for c in report.converted})
            if missing:
                raise BuildError(
                    f"{sample.name}: undefined and not converted: {', '.join(missing)}"
                )
            stamp = {
                "fingerprint": fingerprint,
                "toolchain": toolchain,
                "converted": " ".join(converted),
                "left_alone": " ".join(sorted(report.left_alone)),
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
    )
