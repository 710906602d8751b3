"""The architectures a kernel can be built, booted and converted for, read from the data file
kernels/arches/arches.toml (format: kernels/README.md, "Architectures")."""

from __future__ import annotations

import functools
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ExpectationError, KernelError
from harness.kernels.datafile import read_tables
from harness.paths import ARCHES_FILE

HOST = "x86_64"  # what a spec without an architecture means


@dataclass(frozen=True)
class Arch:
    name: str  # as specs spell it: "x86_64", "arm64"
    kbuild: str  # make ARCH=
    cross_compile: str  # make CROSS_COMPILE= ("" when native)
    image: str  # the boot image, relative to the build tree
    debian: str  # Debian's architecture name
    flavour: str  # Debian's kernel flavour: linux-image-<flavour>
    vng: str  # vng --arch ("" when native)
    qemu: str  # the QEMU system emulator
    elf_machine: int  # e_machine of its modules
    kconfig: str  # the option its .config sets: "X86_64", "ARM64"
    symbols: str  # where a source build's table comes from: "image" (kallsyms-finder), "system-map"
    packages: tuple[str, ...]  # Debian packages that build and boot it on the host

    @property
    def native(self) -> bool:
        return not self.cross_compile and platform.machine() == self.name

    @property
    def target(self) -> str:
        """The make target that writes `image` (its file name)."""
        return Path(self.image).name

    def make_vars(self) -> list[str]:
        """What every make of a kernel or module for this architecture gets."""
        if self.native:
            return []
        return [f"ARCH={self.kbuild}", f"CROSS_COMPILE={self.cross_compile}"]

    def missing_tools(self) -> list[str]:
        """The host commands building and booting it need but are not on PATH."""
        need = [self.qemu] + ([f"{self.cross_compile}gcc"] if self.cross_compile else [])
        return [tool for tool in need if shutil.which(tool) is None]

    def require_tools(self) -> None:
        """A KernelError naming the packages to install when a tool is missing."""
        missing = self.missing_tools()
        if missing:
            raise KernelError(
                f"{self.name}: {', '.join(missing)} not found "
                f"(apt-get install {' '.join(self.packages)}; ci/setup.sh does)"
            )


_KEYS: dict[str, type] = {
    "name": str,
    "kbuild": str,
    "cross_compile": str,
    "image": str,
    "debian": str,
    "flavour": str,
    "vng": str,
    "qemu": str,
    "elf_machine": int,
    "kconfig": str,
    "symbols": str,
    "packages": list,
}


def _arch(table: object, where: str) -> Arch:
    if not isinstance(table, dict):
        raise ExpectationError(f"{where}: not a table")
    if set(table) != set(_KEYS):
        wrong = sorted(set(table) ^ set(_KEYS))
        raise ExpectationError(f"{where}: keys differ from {sorted(_KEYS)}: {wrong}")
    for key, kind in _KEYS.items():
        if not isinstance(table[key], kind):
            raise ExpectationError(f"{where}: '{key}' must be of type {kind.__name__}")
    if not all(isinstance(p, str) for p in table["packages"]):
        raise ExpectationError(f"{where}: 'packages' must be a list of strings")
    if table["symbols"] not in ("image", "system-map"):
        raise ExpectationError(f'{where}: \'symbols\' is "image" or "system-map"')
    return Arch(**{**table, "packages": tuple(table["packages"])})


@functools.cache
def arches(path: Path = ARCHES_FILE) -> dict[str, Arch]:
    """Every declared architecture by name."""
    found: dict[str, Arch] = {}
    for i, table in enumerate(read_tables(path, "arch", "architectures")):
        arch = _arch(table, f"{path}: arch #{i + 1}")
        if arch.name in found:
            raise ExpectationError(f"{path}: arch {arch.name!r} declared twice")
        found[arch.name] = arch
    if HOST not in found:
        raise ExpectationError(f"{path}: the host architecture {HOST!r} is not declared")
    return found


def find_arch(name: str) -> Arch:
    """The declared architecture `name`; a KernelError lists the known ones."""
    known = arches()
    if name not in known:
        raise KernelError(f"unknown architecture {name!r} (known: {', '.join(known)})")
    return known[name]


def arch_of_config(config: dict[str, str]) -> Arch | None:
    """The architecture a parsed .config was made for."""
    return next((a for a in arches().values() if config.get(f"CONFIG_{a.kconfig}") == "y"), None)


def arch_of_machine(elf_machine: int) -> Arch | None:
    """The architecture whose modules have this e_machine."""
    return next((a for a in arches().values() if a.elf_machine == elf_machine), None)
