"""Turn references to unexported kernel symbols into klp relocations.

Converted symbols are renamed `.klp.sym.<obj>.<name>,<sympos>` (new names appended
to .strtab) with st_shndx = SHN_LIVEPATCH; every relocation against them moves out
of its section into `.klp.rela.<obj>.<target>` (so each field is written once).
New sections are appended, so section and symbol indexes stay valid, unless
`.klp.module_relocs.*` annotations are consumed: then sections and symbols are
renumbered everywhere they are referenced.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count
from pathlib import Path

from harness.errors import (
    AmbiguousSymbolError,
    ModuleTargetError,
    SymbolNotFoundError,
    SymposRangeError,
    UsageError,
)
from harness.klp.abi import check_names, klp_symbol_name, parse_klp_symbol
from harness.klp.annotations import Annotation, read_annotations, stale_references
from harness.klp.compressed import write_module
from harness.klp.elfread import (
    SHN_LIVEPATCH,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_WEAK,
    ElfImage,
    cstring,
)
from harness.klp.exports import for_module
from harness.klp.files import printable
from harness.klp.guard import GUARD_SYMBOL, plan_guard
from harness.klp.lto import klp_target
from harness.klp.machines import Machine
from harness.klp.rewrite import Rewrite
from harness.klp.safety import check_safety
from harness.klp.sourcefile import SourceLookup, choose_by_file, read_file_annotations
from harness.klp.symbols import VMLINUX, SymbolTable, module_name, module_symbols
from harness.klp.tables import Symbols

# modpost never reports these as undefined (scripts/mod/modpost.c ignore_undef_symbol).
IGNORED_UNDEFINED = frozenset({"__this_module", "_GLOBAL_OFFSET_TABLE_"})

SKIPPED_BY_ORDINARY = (
    "the kernel applies .klp.rela.<module> sections only for livepatch modules "
    '(MODULE_INFO(livepatch, "Y")) and silently skips them in an ordinary module'
)


@dataclass(frozen=True)
class ConvertedSymbol:
    obj: str
    name: str
    sympos: int
    relocations: int
    address: int | None  # from the symbol table; None when forced or in a module object
    reference: str = ""  # the module's own name when it differs (clang LTO: foo.llvm.<hash>)

    @property
    def klp_name(self) -> str:
        return klp_symbol_name(self.obj, self.name, self.sympos)

    @property
    def referenced(self) -> str:
        """The undefined name of the module this converts (modpost's `undefined!` name)."""
        return self.reference or self.name


@dataclass(frozen=True)
class ConvertReport:
    source: Path
    output: Path
    converted: tuple[ConvertedSymbol, ...]
    left_alone: tuple[str, ...]  # undefined but exported by the target
    already_converted: bool
    warnings: tuple[str, ...]
    livepatch: bool
    guard: str | None = None  # the symbol added by the livepatch guard (harness.klp.guard)
    notes: tuple[str, ...] = ()  # -v: restricted exports converted (harness.klp.exports)

    @property
    def relocations(self) -> int:
        return sum(c.relocations for c in self.converted)


def undefined_symbols(path: Path) -> list[str]:
    """Names of the module's undefined symbols (symtab order), as modpost lists them."""
    img = ElfImage.load(path)
    return list(_undefined(img.symbols(), img.strtab(), weak=False, machine=img.machine))


def _undefined(syms: Symbols, strtab: bytes, weak: bool, machine: Machine) -> dict[str, int]:
    binds = (STB_GLOBAL, STB_WEAK) if weak else (STB_GLOBAL,)
    names, info = syms.names, syms.info
    out: dict[str, int] = {}
    for idx in _where(syms.shndx, SHN_UNDEF):
        if not idx or not names[idx] or info[idx] >> 4 not in binds:
            continue
        name = cstring(strtab, names[idx])
        if name and name not in IGNORED_UNDEFINED and not machine.ignores(name):
            out.setdefault(name, idx)
    return out


def _where(values: Iterable[int], value: int) -> Iterator[int]:
    """The positions in `values` that hold `value`, found at C speed."""
    return compress(count(), map(value.__eq__, values))


@dataclass
class _Choice:
    index: int
    name: str
    obj: str
    sympos: int
    address: int | None
    reference: str = ""  # the module's name, when the kernel's differs (clang LTO)


class _Planner:
    def __init__(
        self,
        img: ElfImage,
        symtab: SymbolTable,
        sympos: Mapping[str, int],
        annotations: dict[int, Annotation],
        force: bool,
        forced_names: set[str],
    ):
        self.img, self.symtab, self.sympos = img, symtab, sympos
        self.annotations, self.force, self.forced = annotations, force, forced_names
        self.livepatch = img.is_livepatch()
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def choose(self, index: int, name: str) -> _Choice:
        path = self.img.label
        note = self.annotations.get(index)
        explicit = self.sympos.get(name, note.sympos if note else None)
        obj = note.obj if note else self._object_of(name)
        # names from the module or the symbol table, as messages show them
        shown, where = printable(name), printable(obj)
        if obj != VMLINUX and not self.livepatch:
            raise ModuleTargetError(
                f"{path}: '{shown}' is a symbol of module {where}, but this is not a livepatch "
                f"module: {SKIPPED_BY_ORDINARY}"
            )
        if obj != VMLINUX and not self.symtab.has_object(obj):
            raise SymbolNotFoundError(
                f"{path}: '{shown}' targets module {where}: give its symbols with "
                f"--object-symbols {where}=PATH.ko"
            )
        self.warnings += check_names(path, obj, name)
        cands = self.symtab.candidates(name, obj)
        forced = self.force and name in self.forced
        if not cands:
            if forced:
                self.warnings.append(
                    f"'{shown}' is not in the symbol table of {where}; converted anyway (--force)"
                )
                return _Choice(index, name, obj, explicit or 0, None)
            raise SymbolNotFoundError(
                f"{path}: '{shown}' is not exported and not in the symbol table of {where} "
                f"({printable(self.symtab.source)})"
            )
        if explicit is None:
            if len(cands) > 1:
                listed = ", ".join(c.describe() for c in cands)
                raise AmbiguousSymbolError(
                    f"{path}: '{shown}' occurs {len(cands)} times in {where} (position, type, "
                    f"address: {listed}); choose one with --sympos {shown}=N or KLP_SYMPOS"
                )
            explicit = 0
        elif explicit == 0 and len(cands) > 1:
            self.warnings.append(
                f"'{shown}' has {len(cands)} candidates in {where} but sympos 0 "
                "was asked for: the kernel will refuse it as ambiguous"
            )
        elif explicit > len(cands):
            msg = (
                f"sympos {explicit} for '{shown}' but {where} has only {len(cands)} "
                f"candidate(s): {', '.join(c.describe() for c in cands)}"
            )
            if not forced:
                raise SymposRangeError(f"{path}: {msg}")
            self.warnings.append(f"{msg}; converted anyway (--force)")
            return _Choice(index, name, obj, explicit, None)
        klp, explicit = klp_target(cands, name, explicit)  # clang LTO: foo -> foo.llvm.<hash>
        reference = name if klp != name else ""
        if reference:
            self.notes.append(f"'{shown}' is {printable(klp)},{explicit} in {where} (clang LTO)")
            self.warnings += check_names(path, obj, klp)
        res = self.symtab.resolve(klp, explicit, obj)
        if not res.ok and res.status == "not-found":
            self.warnings.append(f"{where}: {printable(res.message)}; the kernel will refuse it")
        address = None if obj in self.symtab.relative else res.address
        return _Choice(index, klp, obj, explicit, address, reference)

    def _object_of(self, name: str) -> str:
        if self.symtab.candidates(name, VMLINUX):
            return VMLINUX
        others = [o for o in self.symtab.objects_with(name) if o != VMLINUX]
        if len(others) > 1:
            raise AmbiguousSymbolError(
                f"{self.img.label}: '{printable(name)}' is defined in several modules "
                f"({printable(', '.join(others))}) "
                "and not in vmlinux; pick one with a KLP_MODULE_RELOC annotation"
            )
        return others[0] if others else VMLINUX


def convert_module(
    src: Path,
    dst: Path,
    *,
    symtab: SymbolTable,
    exports: Collection[str] | None,
    symbols: Sequence[str] | None = None,
    sympos: Mapping[str, int] | None = None,
    object_symbols: Mapping[str, Path] | None = None,
    force: bool = False,
    guard: bool = True,
    versions: Mapping[str, int] | None = None,
    sympos_files: Mapping[str, str] | None = None,
    sources: SourceLookup | None = None,
) -> ConvertReport:
    """Convert `src` into `dst` (may be the same path). See the module docstring.

    With `guard`, a converted module also gets the livepatch guard (harness.klp.guard);
    `versions` are the target's Module.symvers CRCs for its __versions entry.
    `sympos_files` ({name: source file}) and KLP_SYMPOS_FILE annotations choose positions
    by source file, through `sources` (harness.klp.sourcefile)."""
    if exports is None and not symbols:
        raise UsageError(
            "say which symbols to convert: give a Module.symvers (exports) or symbol names"
        )
    src, dst = Path(src), Path(dst)
    sympos = dict(sympos or {})
    img = ElfImage.load(src)
    img.validate_relocations()
    # the caller's table stays as it was: module objects are added to a copy
    symtab = SymbolTable(symtab.source, dict(symtab.objects), set(symtab.relative))
    for obj, path in (object_symbols or {}).items():
        symtab.add_object(module_name(obj), module_symbols(Path(path)))
    syms = img.symbols()
    strtab = img.strtab()
    seen = for_module(img, exports)  # exports restricted to other modules are not usable
    exports = seen.usable
    annotations, dropped = read_annotations(img, syms, strtab)
    by_file, file_sections = read_file_annotations(img, syms, strtab)
    dropped |= file_sections
    stale = stale_references(img, syms, strtab, dropped) if dropped else {}
    wanted = set(symbols or ())
    weak = bool(wanted) or bool(annotations) or bool(by_file)
    undefined = _undefined(syms, strtab, weak, img.machine)
    existing = {k.name for n in _klp_names(syms, strtab) if (k := parse_klp_symbol(n))}
    left_alone: list[str] = []
    todo: dict[str, int] = {}
    for name, idx in undefined.items():
        if wanted and name not in wanted:
            continue
        if not wanted and name == GUARD_SYMBOL:
            continue  # a klp relocation to the guard symbol would defeat the guard
        if not wanted and (syms.info[idx] >> 4) == STB_WEAK and idx not in annotations:
            continue  # modpost does not complain about weak undefined symbols either
        if exports is not None and name in exports:
            left_alone.append(name)
            continue
        todo[name] = idx
    missing = sorted(wanted - set(undefined) - existing)
    if missing:
        raise SymbolNotFoundError(
            f"{img.label}: --symbol {printable(missing[0])}: the module has no undefined "
            "symbol of that name"
        )
    warnings = [
        f"--sympos {printable(n)}: not converted here, ignored"
        for n in sorted(set(sympos) - set(todo))
    ] + list(seen.warnings)
    if not todo and not dropped:
        already = bool(existing)
        if not already:
            warnings.append("nothing to convert")
        if src.resolve() != dst.resolve():
            write_module(dst, [img.view], src.stat().st_mode & 0o777)
        return ConvertReport(
            src, dst, (), tuple(left_alone), already, tuple(warnings), img.is_livepatch()
        )
    chosen, file_notes, file_warnings = choose_by_file(
        img.label, todo, sympos_files or {}, by_file, sympos,
        lambda n: len(symtab.candidates(n)), sources,
    )  # fmt: skip
    sympos.update(chosen)
    warnings += file_warnings
    planner = _Planner(img, symtab, sympos, annotations, force, wanted)
    choices = [planner.choose(idx, name) for name, idx in sorted(todo.items())]
    check_safety(img, syms, strtab, {c.index: c.obj for c in choices})
    plan = plan_guard(img, syms, strtab, versions) if guard and choices else None
    rewrite = Rewrite(img, syms, dropped)
    rewrite.discard(stale)
    counts = rewrite.convert(
        {c.index: (c.obj, klp_symbol_name(c.obj, c.name, c.sympos)) for c in choices}
    )
    if plan is not None:
        rewrite.add_undefined(plan.symbol)
        for index, data in plan.appends:
            rewrite.append(index, data)
    rewrite.write(dst, mode=src.stat().st_mode & 0o777)
    converted = tuple(
        ConvertedSymbol(c.obj, c.name, c.sympos, counts.get(c.index, 0), c.address, c.reference)
        for c in choices
    )
    return ConvertReport(
        src,
        dst,
        converted,
        tuple(left_alone),
        False,
        tuple(warnings + planner.warnings),
        planner.livepatch,
        plan.symbol if plan else None,
        seen.notes + tuple(planner.notes) + tuple(file_notes),
    )


def _klp_names(syms: Symbols, strtab: bytes) -> list[str]:
    return [cstring(strtab, syms.names[i]) for i in _where(syms.shndx, SHN_LIVEPATCH)]
