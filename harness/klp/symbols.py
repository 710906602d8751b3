"""Target symbol tables (System.map, /proc/kallsyms, a module's own symtab) and Module.symvers.

Positions are counted the way kernel/livepatch/core.c does: the n-th symbol of a
name in the table's own order (kallsyms order for vmlinux, which is the file order
of System.map and /proc/kallsyms; symtab order for a module). File order is kept,
never re-sorted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from harness.errors import SymbolFileError
from harness.klp import lto
from harness.klp.files import printable, read_regular

VMLINUX = "vmlinux"
# A full kallsyms is ~6 MiB and a Module.symvers ~2 MiB; more cannot be one (/dev/zero).
SYMBOL_FILE_LIMIT = 256 << 20


@dataclass(frozen=True)
class Candidate:
    position: int  # 1-based, as a klp sympos names it
    address: int
    type: str  # nm-style letter
    # clang LTO (harness.klp.lto), when some namesake is `<name>.llvm.<hash>`: the name the
    # kernel needs (suffixed or not) and its position among symbols of exactly that name.
    name: str = ""
    sympos: int = 0

    def describe(self) -> str:
        full = f" {printable(self.name)},{self.sympos}" if self.name else ""
        return f"{self.position}{full} ({printable(self.type)} {self.address:#018x})"


@dataclass(frozen=True)
class Resolution:
    """What the kernel's klp_find_object_symbol() would do with (obj, name, sympos)."""

    status: str  # "resolves" | "ambiguous" | "not-found" | "position-too-large"
    address: int | None
    candidates: tuple[Candidate, ...]
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "resolves"


def _read_text(path: Path, what: str) -> str:
    """A regular file of at most SYMBOL_FILE_LIMIT bytes; /proc/kallsyms qualifies (procfs
    files are regular, of size 0, and read to their end)."""
    data = read_regular(path, SYMBOL_FILE_LIMIT, what=f"{printable(path)}: cannot read {what}")
    return data.decode("latin-1")


class KallsymsLine(NamedTuple):
    """One symbol of a System.map or /proc/kallsyms text, in file order."""

    address: int
    type: str  # nm-style letter
    name: str
    module: str | None  # the `[module]` column without brackets; None for vmlinux
    raw: str  # the line as read


def kallsyms_lines(text: str, source: str) -> Iterator[KallsymsLine]:
    """The symbols of a System.map or /proc/kallsyms text: `address type name [module]`.
    Blank lines are skipped; anything else raises SymbolFileError "<source>:<lineno>: ..."."""
    source = printable(source)
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if (
            len(parts) not in (3, 4)
            or len(parts[1]) != 1
            or (len(parts) == 4 and not (parts[3].startswith("[") and parts[3].endswith("]")))
        ):
            hint = (
                " (Debian's placeholder System.map? use the table recovered from vmlinuz)"
                if "System.map" in line
                else ""
            )
            raise SymbolFileError(
                f"{source}:{lineno}: not a System.map/kallsyms line: {line[:80]!r}{hint}"
            )
        try:
            address = int(parts[0], 16)
        except ValueError:
            raise SymbolFileError(f"{source}:{lineno}: bad address {parts[0][:40]!r}") from None
        if address >= 1 << 64:
            raise SymbolFileError(f"{source}:{lineno}: address wider than 64 bits")
        module = parts[3][1:-1] if len(parts) == 4 else None
        yield KallsymsLine(address, parts[1], parts[2], module, line)


@dataclass
class SymbolTable:
    """Symbols per object ("vmlinux" or a module name), each name's entries in table order."""

    source: str
    objects: dict[str, dict[str, list[tuple[int, str]]]] = field(default_factory=dict)
    # Objects read from a .ko: addresses are section offsets, known only after load.
    relative: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path) -> SymbolTable:
        """Read a System.map or a saved /proc/kallsyms (`[module]` column allowed)."""
        return cls.parse(_read_text(path, "symbol table"), printable(path))

    @classmethod
    def parse(cls, text: str, source: str) -> SymbolTable:
        source = printable(source)
        table = cls(source)
        vmlinux: dict[str, list[tuple[int, str]]] = {}
        table.objects[VMLINUX] = vmlinux
        nonzero = False
        count = 0
        for entry in kallsyms_lines(text, source):
            nonzero = nonzero or entry.address != 0
            count += 1
            objmap = vmlinux if entry.module is None else table.objects.setdefault(entry.module, {})
            objmap.setdefault(entry.name, []).append((entry.address, entry.type))
        if not count:
            raise SymbolFileError(f"{source}: no symbols in the file")
        if not nonzero:
            raise SymbolFileError(
                f"{source}: every address is zero (kallsyms read without root?); "
                "positions and verdicts need real addresses"
            )
        return table

    def add_object(self, name: str, symbols: Iterable[tuple[str, int, str]]) -> None:
        """Add a module object's symbols (name, address, type) in its kallsyms order."""
        objmap: dict[str, list[tuple[int, str]]] = {}
        for sym, address, kind in symbols:
            objmap.setdefault(sym, []).append((address, kind))
        self.objects[module_name(name)] = objmap
        self.relative.add(module_name(name))

    def has_object(self, obj: str) -> bool:
        return obj in self.objects

    def candidates(self, name: str, obj: str = VMLINUX) -> list[Candidate]:
        """What a module's reference to `name` may mean: its symbols, and on a clang LTO
        kernel also each `name.llvm.<hash>` (address order, their full names in .name)."""
        objmap = self.objects.get(obj, {})
        if found := lto.namesakes(objmap, name):
            return [
                Candidate(i, addr, kind, full, pos)
                for i, (full, pos, addr, kind) in enumerate(found, 1)
            ]
        return self.exact(name, obj)

    def exact(self, name: str, obj: str = VMLINUX) -> list[Candidate]:
        """The symbols named exactly `name`: what the kernel's resolver matches."""
        entries = self.objects.get(obj, {}).get(name, [])
        return [Candidate(i, addr, kind) for i, (addr, kind) in enumerate(entries, 1)]

    def objects_with(self, name: str) -> list[str]:
        return [obj for obj, names in self.objects.items() if name in names]

    def resolve(self, name: str, sympos: int, obj: str = VMLINUX) -> Resolution:
        """What the kernel does with the klp symbol `name,sympos`: exact names only."""
        res = resolve(self.exact(name, obj), name, sympos, obj, relative=obj in self.relative)
        if res.status == "not-found" and (
            hint := lto.not_found_hint(self.objects.get(obj, {}), name)
        ):
            return Resolution(res.status, res.address, res.candidates, res.message + hint)
        return res


def resolve(
    cands: list[Candidate], name: str, sympos: int, obj: str, relative: bool = False
) -> Resolution:
    """Mirror klp_find_callback()/klp_find_object_symbol(): including that a match at
    address 0 counts as "not found", and that the search stops at the wanted position.
    `relative`: addresses are offsets in a module not yet loaded (0 is a real place)."""
    count, address, matched = 0, 0, False
    for cand in cands:
        count += 1
        address = cand.address
        matched = True
        if (sympos and count == sympos) or (not sympos and count > 1):
            break
    listed = ", ".join(c.describe() for c in cands)
    found = tuple(cands)
    # The kernel names vmlinux as a NULL object: its messages say '(null)'.
    shown = "(null)" if obj == VMLINUX else printable(obj)
    name = printable(name)  # from a module or a symbol table: messages show it escaped
    if not matched or (address == 0 and not relative):
        why = f" (listed at address 0: {listed})" if cands else ""
        return Resolution(
            "not-found", None, found, f"symbol '{name}' not found in symbol table{why}"
        )
    if count > 1 and sympos == 0:
        return Resolution(
            "ambiguous",
            None,
            found,
            f"unresolvable ambiguity for symbol '{name}' in object '{shown}': "
            f"{len(cands)} candidates, positions {listed}",
        )
    if sympos > 0 and sympos != count:
        return Resolution(
            "position-too-large",
            None,
            found,
            f"symbol position {sympos} for symbol '{name}' in object '{shown}' "
            f"not found ({len(cands)} candidate(s))",
        )
    where = f"offset {address:#x} in {shown}" if relative else f"{address:#018x}"
    return Resolution("resolves", address, found, f"resolves to {where}")


def module_name(name: str) -> str:
    """The kernel's name for a module object: file stem with '-' read as '_'."""
    stem = name.rsplit("/", 1)[-1]
    for suffix in (".ko", ".o"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.replace("-", "_")


class SymversLine(NamedTuple):
    name: str
    crc: int
    owner: str  # "vmlinux" or the exporting module's path without .ko
    kind: str  # EXPORT_SYMBOL or EXPORT_SYMBOL_GPL
    namespace: str  # "" when none


def symvers_lines(path: Path) -> list[SymversLine]:
    """Every entry of a Module.symvers (`crc<TAB>name<TAB>module<TAB>export[<TAB>ns]`),
    checked: one clear line names the first malformed one. An empty one is refused: a
    kernel's never is, and with no exports every undefined symbol of a module (printk too)
    would be converted."""
    text = _read_text(path, "Module.symvers")
    label = printable(path)
    out: list[SymversLine] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        crc = fields[0]
        if len(fields) < 4 or not crc.startswith("0x") or not fields[1] or not fields[3]:
            raise SymbolFileError(
                f"{label}:{lineno}: not a Module.symvers line "
                f"(crc, symbol, module, export type, tab-separated): {line[:80]!r}"
            )
        try:
            value = int(crc, 16)
        except ValueError:
            value = -1
        if not 0 <= value <= 0xFFFFFFFF:  # modpost's CRCs are 32-bit
            raise SymbolFileError(f"{label}:{lineno}: bad CRC {crc[:20]!r}")
        if not fields[3].startswith("EXPORT_SYMBOL"):
            raise SymbolFileError(f"{label}:{lineno}: unknown export type {fields[3][:40]!r}")
        namespace = fields[4] if len(fields) > 4 else ""
        out.append(SymversLine(fields[1], value, fields[2], fields[3], namespace))
    if not out:
        raise SymbolFileError(
            f"{label}: no exported symbols in this Module.symvers; give the target kernel's "
            "(its headers' Module.symvers), not an external module build's"
        )
    return out


def load_symvers(path: Path) -> dict[str, int]:
    """The exported names of a Module.symvers with their CRCs (0 without CONFIG_MODVERSIONS),
    the ones a module's __versions carries."""
    return {line.name: line.crc for line in symvers_lines(path)}


def module_symbols(path: Path) -> list[tuple[str, int, str]]:
    """A module's kallsyms as the kernel keeps it after load: its "core" symbols (defined,
    named, in an allocated non-init section, or per-cpu) in symtab order (module.c
    is_core_symbol with CONFIG_KALLSYMS_ALL=y, as in distribution kernels)."""
    from harness.klp.elfread import (
        SHF_ALLOC,
        SHF_EXECINSTR,
        SHF_WRITE,
        SHN_LORESERVE,
        SHT_NOBITS,
        ElfImage,
        cstring,
    )

    img = ElfImage.load(path)
    syms = img.symbols()
    strtab = img.strtab()
    out: list[tuple[str, int, str]] = []
    pcpu = next((s.index for s in img.sections if s.name == ".data..percpu"), -1)
    for name_off, info, shndx, value in zip(
        syms.names, syms.info, syms.shndx, syms.values(), strict=True
    ):
        if not name_off or shndx == 0 or shndx >= SHN_LORESERVE:
            continue
        sec = img.sections[shndx]
        if shndx != pcpu and (not sec.flags & SHF_ALLOC or sec.name.startswith(".init")):
            continue
        if shndx == pcpu:
            kind = "a"
        elif sec.flags & SHF_EXECINSTR:
            kind = "t"
        elif sec.type == SHT_NOBITS:
            kind = "b"
        else:
            kind = "d" if sec.flags & SHF_WRITE else "r"
        if info >> 4 != 0:  # global or weak: upper case, like nm
            kind = kind.upper()
        out.append((cstring(strtab, name_off), value, kind))
    return out
