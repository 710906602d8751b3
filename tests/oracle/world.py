"""Convert every module of a cached Debian kernel (all references to vmlinux become klp
relocations: vmlinux's exports are treated as unexported) and check each with the oracle."""

from __future__ import annotations

import lzma
import re
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.kernels.kernel import Kernel
from harness.klp.convert import convert_module
from harness.klp.guard import GUARD_SYMBOL
from harness.klp.symbols import SymbolTable, load_symvers
from oracle.compare import Difference, compare
from oracle.elf import SHN_UNDEF, Elf, ElfFormatError
from oracle.loader import KernelTable

SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


@dataclass
class ModuleOutcome:
    name: str
    relocations: int = 0  # moved by the converter (its own count)
    klp_applied: int = 0  # klp relocations the simulated loader applied
    failure: str | None = None  # the converter refused: its one-line reason
    differences: list[Difference] = field(default_factory=list)


@dataclass
class WorldResult:
    kernel: str
    outcomes: list[ModuleOutcome] = field(default_factory=list)
    seconds: float = 0.0
    convert_seconds: float = 0.0
    check_seconds: float = 0.0

    @property
    def modules(self) -> int:
        return len(self.outcomes)

    @property
    def converted(self) -> int:
        return sum(1 for o in self.outcomes if o.failure is None and o.relocations)

    @property
    def relocations(self) -> int:
        return sum(o.relocations for o in self.outcomes)

    @property
    def klp_applied(self) -> int:
        return sum(o.klp_applied for o in self.outcomes)

    @property
    def identical(self) -> int:
        return sum(1 for o in self.outcomes if o.failure is None and not o.differences)

    def failures(self) -> dict[str, list[str]]:
        """Converter refusals grouped by reason (names and paths blanked out)."""
        groups: dict[str, list[str]] = {}
        for o in self.outcomes:
            if o.failure is not None:
                groups.setdefault(_generic(o.failure), []).append(o.name)
        return groups

    def differences(self) -> list[tuple[str, Difference]]:
        return [(o.name, d) for o in self.outcomes for d in o.differences]


def _generic(message: str) -> str:
    message = re.sub(r"'[^']*'", "'…'", message)
    return re.sub(r"^\S+\.ko: ", "", re.sub(r"\(position[^)]*\)", "(…)", message))


def module_files(kernel: Kernel) -> list[Path]:
    found = [p for p in kernel.modules_dir.rglob("*.ko*") if p.name.endswith(SUFFIXES)]
    return sorted(found)


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed (.ko.xz with lzma, .ko.zst with the zstd tool)."""
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(
            ["zstd", "-dcq", str(path)], check=True, capture_output=True, timeout=120
        ).stdout
    return path.read_bytes()


def module_exports(symvers: Path) -> frozenset[str]:
    """Names Module.symvers lists as exported by a module (not by vmlinux): left alone; and
    the livepatch guard's klp_enable_patch, which the converter adds as an ordinary export."""
    names = {GUARD_SYMBOL}
    for line in symvers.read_text(errors="surrogateescape").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2] != "vmlinux":
            names.add(parts[1])
    return frozenset(names)


def run_world(
    kernel: Kernel,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WorldResult:
    files = module_files(kernel)[:limit]
    symtab = SymbolTable.load(kernel.kallsyms)
    table = KernelTable(kernel.kallsyms.read_text(errors="surrogateescape"))
    exports = module_exports(kernel.symvers)
    versions = load_symvers(kernel.symvers)  # CRCs for the guard's __versions entry
    result = WorldResult(kernel.name)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="klp-world-") as tmp:
        work = Path(tmp)
        for n, path in enumerate(files, 1):
            result.outcomes.append(
                _one(path, kernel.modules_dir, work, (symtab, versions), table, exports, result)
            )
            if progress:
                progress(n, len(files))
    result.seconds = time.perf_counter() - start
    return result


def _one(
    path: Path,
    root: Path,
    work: Path,
    target: tuple[SymbolTable, dict[str, int]],
    table: KernelTable,
    exports: frozenset[str],
    result: WorldResult,
) -> ModuleOutcome:
    name = str(path.relative_to(root))
    outcome = ModuleOutcome(name)
    original = read_module(path)
    src, dst = path, work / "out.ko"
    if path.suffix != ".ko":  # compressed: the converter reads an ELF file
        src = work / "in.ko"
        src.write_bytes(original)
    try:
        undefined = {s.name for s in Elf(original, name).symbols if s.shndx == SHN_UNDEF}
    except ElfFormatError as err:
        outcome.failure = f"oracle cannot read it: {err}"
        return outcome
    # a name with several vmlinux entries: the export is the global one
    sympos = {
        n: pos for n in undefined - exports if (pos := table.exported_position(n)) is not None
    }
    t0 = time.perf_counter()
    try:
        symtab, versions = target
        report = convert_module(
            src, dst, symtab=symtab, exports=exports, sympos=sympos, versions=versions
        )
    except HarnessError as err:
        outcome.failure = f"{type(err).__name__}: {str(err).replace(str(src), name)}"
        return outcome
    finally:
        result.convert_seconds += time.perf_counter() - t0
    outcome.relocations = report.relocations
    t1 = time.perf_counter()
    seed = zlib.crc32(name.encode())
    crc = target[1].get(GUARD_SYMBOL)
    verdict = compare(original, dst.read_bytes(), table, exports, seed, name, guard_crc=crc)
    result.check_seconds += time.perf_counter() - t1
    outcome.klp_applied = verdict.klp_relocations
    outcome.differences = verdict.differences
    if verdict.identical and outcome.klp_applied != outcome.relocations:
        outcome.differences.append(
            Difference(
                "relocation count",
                f"converter moved {outcome.relocations}, loader applied {outcome.klp_applied}",
            )
        )
    return outcome
