"""Pick the compiler a kernel's modules must be built with: the host's, or a Debian build root.

The kernel records its compiler in `CONFIG_CC_VERSION_TEXT`. Module builds need the same
gcc major (newer kernels pass flags older gcc rejects, e.g. gcc-12 and
`-fmin-function-alignment=16` for the gcc-14-built 7.x kernels). A clang-built kernel (e.g.
"Debian clang version 19.1.7", the LTO source config) gets the host's clang of that major with
its LLVM tools: every make gets `LLVM=-19` (clang-19, ld.lld-19, llvm-ar-19, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.build import buildroot
from harness.build.buildroot import ensure_buildroot
from harness.cache import cache_root
from harness.console import Printer
from harness.errors import ToolchainError
from harness.kernels.arch import Arch, find_arch
from harness.kernels.kernel import Kernel
from harness.kernels.releases import gcc_suites

__all__ = [
    "CompilerVersion",
    "Toolchain",
    "clang_toolchain",
    "ensure_buildroot",
    "parse_cc_version_text",
    "select",
    "suite_for",
]


@dataclass(frozen=True)
class CompilerVersion:
    text: str  # the whole first line, e.g. "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    command: str  # the command the kernel was built with, e.g. "x86_64-linux-gnu-gcc-14"
    family: Literal["gcc", "clang"]
    version: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version[0]


# "<command> (<package info>) <version> [date]", as `gcc --version` prints its first line.
_GCC_TEXT = re.compile(r"^(?P<cmd>\S+) \((?P<info>[^)]*)\) (?P<ver>\d+(?:\.\d+)*)")
_CLANG_TEXT = re.compile(r"\bclang version (?P<ver>\d+(?:\.\d+)*)")
_GCC_COMMAND = re.compile(r"(?:^|[-/])(?:gcc|cc)(?:-\d+)?$")


def parse_cc_version_text(text: str) -> CompilerVersion:
    """Parse `CONFIG_CC_VERSION_TEXT` (or the first line of `<cc> --version`)."""
    line = text.strip().strip('"').splitlines()[0].strip() if text.strip() else ""
    if m := _CLANG_TEXT.search(line):
        version = tuple(int(x) for x in m.group("ver").split("."))
        return CompilerVersion(line, "clang", "clang", version)
    m = _GCC_TEXT.match(line)
    if not m or not _GCC_COMMAND.search(m.group("cmd")):
        raise ToolchainError(f"cannot read a gcc version from compiler text {line!r}")
    version = tuple(int(x) for x in m.group("ver").split("."))
    return CompilerVersion(line, m.group("cmd"), "gcc", version)


def suite_for(kernel_cc: CompilerVersion, host_cc: CompilerVersion | None) -> str | None:
    """None to build on the host, else the Debian suite whose root ships the kernel's gcc."""
    if kernel_cc.family != "gcc":
        raise ToolchainError(
            f"kernel built with {kernel_cc.text!r}: only gcc-built kernels are supported"
        )
    if host_cc is not None and host_cc.family == "gcc" and host_cc.major == kernel_cc.major:
        return None
    suites = gcc_suites()
    suite = suites.get(kernel_cc.major)
    if suite is None:
        known = ", ".join(f"gcc-{k} -> {v}" for k, v in sorted(suites.items()))
        raise ToolchainError(
            f"kernel built with {kernel_cc.text!r}: no Debian suite known to ship "
            f"gcc-{kernel_cc.major} (known: {known})"
        )
    return suite


@dataclass(frozen=True)
class Toolchain:
    kind: Literal["host", "buildroot"]
    description: str  # "host gcc-12 (Debian 12.2.0-14) 12.2.0", "buildroot trixie gcc-14 (...)"
    cc: str  # compiler command, valid where the command runs (host or root)
    root: Path | None
    gcc_major: int  # 0 for clang
    make_vars: tuple[str, ...] = ()  # given to every make: ("LLVM=-19",) for clang

    def command(self, argv: Sequence[str], *, binds: Sequence[Path] = ()) -> list[str]:
        """`argv` ready for subprocess: as is on the host, or wrapped to run inside the root
        with `binds` (headers tree, module dir) at the same absolute paths. A `make` command
        gets `make_vars` (kbuild needs LLVM= on every make of a clang kernel)."""
        if self.make_vars and argv and argv[0] == "make":
            argv = [argv[0], *self.make_vars, *argv[1:]]
        if self.kind == "host" or self.root is None:
            return list(argv)
        return buildroot.wrap(self.root, argv, binds)

    def make_args(self) -> list[str]:
        """Variables for `make -C <headers> M=<dir>`: the compiler command, explicitly,
        in case the headers' own default (Debian's .kernelvariables) names another."""
        return list(self.make_vars) if self.make_vars else [f"CC={self.cc}"]


def _version_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _candidates(kernel_cc: CompilerVersion) -> list[str]:
    # The kernel's own command first (Debian's headers use it), then plain names.
    names = [kernel_cc.command, f"gcc-{kernel_cc.major}", "gcc"]
    return list(dict.fromkeys(Path(n).name for n in names))


def host_compiler(kernel_cc: CompilerVersion) -> tuple[str, CompilerVersion] | None:
    """The host compiler to compare: the first candidate on PATH, with its version."""
    for name in _candidates(kernel_cc):
        if shutil.which(name) is None:
            continue
        line = _version_line([name, "--version"])
        if line is None:
            continue
        try:
            version = parse_cc_version_text(line)
        except ToolchainError:
            continue
        if version.major == kernel_cc.major or name == "gcc":
            return name, version
    return None


def kernel_compiler(kernel: Kernel) -> CompilerVersion:
    text = kernel.config_value("CC_VERSION_TEXT")
    if text == "n" or not text:
        raise ToolchainError(f"{kernel.name}: {kernel.config} has no CONFIG_CC_VERSION_TEXT")
    return parse_cc_version_text(text)


def _root_toolchain(suite: str, kernel_cc: CompilerVersion, printer: Printer) -> Toolchain:
    root = ensure_buildroot(suite, printer=printer)
    for name in _candidates(kernel_cc):
        if not (root / "usr/bin" / name).exists():
            continue
        probe = Toolchain("buildroot", "", name, root, kernel_cc.major)
        line = _version_line(probe.command([name, "--version"]))
        if line is None:
            raise ToolchainError(f"{root}: cannot run {name} --version inside the build root")
        found = parse_cc_version_text(line)
        if found.major != kernel_cc.major:
            continue
        return Toolchain("buildroot", f"buildroot {suite} {line}", name, root, found.major)
    raise ToolchainError(f"{root}: no gcc-{kernel_cc.major} in the {suite} build root")


# Per compiler text, so repeated calls (every build step asks) spawn no compiler again.
_SELECTED: dict[tuple[str, str, Path], Toolchain] = {}


def select(kernel: Kernel, *, printer: Printer | None = None) -> Toolchain:
    """The toolchain that builds modules for `kernel`: host gcc of the same major, else
    a cached Debian build root whose suite ships that gcc (created on first use)."""
    kernel_cc = kernel_compiler(kernel)
    arch = find_arch(kernel.arch)
    key = (kernel_cc.text, arch.name, cache_root())  # the root's place follows the cache dir
    known = _SELECTED.get(key)
    if known is not None and (known.root is None or (known.root / buildroot.MARKER).exists()):
        return known
    if arch.native:
        chosen = _select(kernel_cc, printer or Printer())
    else:
        chosen = cross_toolchain(arch, kernel_cc, printer)
    _SELECTED[key] = chosen
    return chosen


def cross_toolchain(
    arch: Arch, kernel_cc: CompilerVersion, printer: Printer | None = None
) -> Toolchain:
    """The cross gcc for `arch` (Debian's gcc-<triplet>) of the kernel's gcc major: the
    host's, else the one of a build root whose suite ships that major. Every make gets ARCH=
    and CROSS_COMPILE=, which also name the compiler."""
    if kernel_cc.family != "gcc":
        raise ToolchainError(f"{arch.name}: kernel built with {kernel_cc.text!r}: only gcc")
    cc = f"{arch.cross_compile}gcc"
    make_vars = tuple(arch.make_vars())
    line = _version_line([cc, "--version"]) if shutil.which(cc) else None
    found = parse_cc_version_text(line) if line else None
    if line and found and found.major == kernel_cc.major:
        return Toolchain("host", f"host {line}", cc, None, found.major, make_vars)
    suite = suite_for(kernel_cc, None)
    if suite is None:  # only when the kernel's gcc is the host's
        raise ToolchainError(
            f"{arch.name}: no {cc} on the host (apt-get install {' '.join(arch.packages)})"
        )
    root = ensure_buildroot(suite, printer=printer or Printer(), cross=arch.cross_compile)
    probe = Toolchain("buildroot", "", cc, root, kernel_cc.major, make_vars)
    line = _version_line(probe.command([cc, "--version"]))
    found = parse_cc_version_text(line) if line else None
    if not line or not found or found.major != kernel_cc.major:
        raise ToolchainError(f"{root}: no {cc} of gcc-{kernel_cc.major} in the {suite} root")
    return Toolchain("buildroot", f"buildroot {suite} {line}", cc, root, found.major, make_vars)


# What LLVM=<suffix> makes kbuild run besides clang (scripts/Makefile.clang, Makefile).
_LLVM_TOOLS = ("ld.lld", "llvm-ar", "llvm-nm", "llvm-objcopy", "llvm-strip", "llvm-readelf")


def clang_toolchain(kernel_cc: CompilerVersion) -> Toolchain:
    """The host's clang of the kernel's major and its LLVM tools: `clang-N` with `LLVM=-N`,
    else a plain `clang` of that major with `LLVM=1`."""
    major = kernel_cc.major
    for suffix in (f"-{major}", ""):
        cc = f"clang{suffix}"
        line = _version_line([cc, "--version"]) if shutil.which(cc) else None
        if line is None:
            continue
        try:
            found = parse_cc_version_text(line)
        except ToolchainError:
            continue
        if found.family != "clang" or found.major != major:
            continue
        missing = [t + suffix for t in _LLVM_TOOLS if shutil.which(t + suffix) is None]
        if missing:
            raise ToolchainError(
                f"kernel built with {kernel_cc.text!r}: {cc} found but not "
                f"{', '.join(missing)} (Debian packages lld-{major} llvm-{major})"
            )
        llvm = f"LLVM={suffix}" if suffix else "LLVM=1"
        return Toolchain("host", f"host {line} ({llvm})", cc, None, 0, (llvm,))
    raise ToolchainError(
        f"kernel built with {kernel_cc.text!r}: no clang-{major} on the host "
        f"(Debian packages clang-{major} lld-{major} llvm-{major})"
    )


def _select(kernel_cc: CompilerVersion, printer: Printer) -> Toolchain:
    if kernel_cc.family == "clang":
        return clang_toolchain(kernel_cc)
    host = host_compiler(kernel_cc)
    suite = suite_for(kernel_cc, host[1] if host else None)
    if suite is None and host is not None:
        name, version = host
        return Toolchain("host", f"host {version.text}", name, None, version.major)
    assert suite is not None
    return _root_toolchain(suite, kernel_cc, printer)
