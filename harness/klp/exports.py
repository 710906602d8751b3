"""Module.symvers with namespaces: which exports a given module may really use.

A Module.symvers line is `crc<TAB>name<TAB>owner<TAB>EXPORT_SYMBOL[_GPL]<TAB>namespace`.
Two kinds of namespace matter to the module loader (kernel/module/main.c
verify_namespace_is_imported(), the same rule as scripts/mod/modpost.c check_exports()):

- `module:<patterns>` (EXPORT_SYMBOL_FOR_MODULES, from about 6.18; 7.x exports kvm's,
  printf_kunit's, autofs4's symbols so): only a module whose name matches one of the
  comma-separated patterns (a trailing `*` globs, `-` reads as `_`) may use it; the namespace
  cannot be imported. For any other module the symbol is as good as unexported, so the
  converter turns it into a klp relocation like one. (A 2025 patch would also have required
  .modinfo `intree=Y`; Debian's 7.3.4 does not: an out-of-tree module named printf_kunit
  loaded there with an ordinary reference to kptr_restrict, and its modpost did not object.)
- any other non-empty namespace (EXPORT_SYMBOL_NS): still an export, but the loader refuses a
  module whose .modinfo has no `import_ns=<namespace>` (MODULE_IMPORT_NS). That is the
  module's bug, not something to convert: the converter leaves the symbol alone and warns.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.klp.elfread import ElfImage
from harness.klp.files import printable
from harness.klp.symbols import module_name, symvers_lines

MODULE_NS_PREFIX = "module:"


@dataclass(frozen=True)
class Export:
    name: str
    crc: int
    owner: str  # "vmlinux" or the exporting module's path without .ko
    kind: str  # EXPORT_SYMBOL or EXPORT_SYMBOL_GPL
    namespace: str  # "" when none

    @property
    def restricted_to(self) -> str | None:
        """The module patterns of a `module:` namespace, else None."""
        if self.namespace.startswith(MODULE_NS_PREFIX):
            return self.namespace[len(MODULE_NS_PREFIX) :]
        return None


class Exports(Mapping[str, int]):
    """A target's exports: name -> CRC like load_symvers() (so `in`, iteration and the
    livepatch guard's `versions.get` work unchanged), with each name's Export in `info`."""

    def __init__(self, info: dict[str, Export], source: str) -> None:
        self.info = info
        self.source = source

    def __getitem__(self, name: str) -> int:
        return self.info[name].crc

    def __iter__(self) -> Iterator[str]:
        return iter(self.info)

    def __len__(self) -> int:
        return len(self.info)


def load_exports(path: Path) -> Exports:
    """Module.symvers read with every field; the checks and errors of load_symvers()."""
    info = {e.name: Export(*e) for e in symvers_lines(path)}
    return Exports(info, printable(path))


def module_match(modname: str, patterns: str) -> bool:
    """kernel/module/main.c module_match(): `modname` matches one of the comma-separated
    `patterns`; a pattern ending in `*` matches a prefix; `-` and `_` compare equal."""
    name = modname.replace("-", "_")
    for pattern in patterns.split(","):
        pattern = pattern.replace("-", "_")
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif pattern and name == pattern:
            return True
    return False


@dataclass(frozen=True)
class ModuleExports:
    """The target's exports as one module sees them."""

    usable: Collection[str] | None  # what the converter leaves alone (None: not known)
    notes: tuple[str, ...]  # -v: restricted exports that will be converted
    warnings: tuple[str, ...]  # exports in a namespace the module does not import


def for_module(img: ElfImage, exports: Collection[str] | None) -> ModuleExports:
    """`exports` without what `img` may not use; unchanged unless it is an Exports.
    Notes and warnings cover only the symbols `img` leaves undefined."""
    if not isinstance(exports, Exports):
        return ModuleExports(exports, (), ())
    modinfo = img.modinfo()
    names = [i.removeprefix("name=") for i in modinfo if i.startswith("name=")]
    name = names[0] if names else module_name(img.path.name)
    imported = {i.removeprefix("import_ns=") for i in modinfo if i.startswith("import_ns=")}
    undefined = _undefined_names(img)
    refused: set[str] = set()
    notes: list[str] = []
    warnings: list[str] = []
    for sym in sorted(undefined & set(exports.info)):
        export = exports.info[sym]
        patterns = export.restricted_to
        shown = printable(sym)
        if patterns is not None:
            if module_match(name, patterns):
                continue
            refused.add(sym)
            notes.append(
                f"{shown}: {export.kind} in namespace {printable(export.namespace)}: exported "
                f"only to module(s) {printable(patterns)}, not to {printable(name)}; "
                "converted like an unexported symbol"
            )
        elif export.namespace and export.namespace not in imported:
            ns = printable(export.namespace)
            warnings.append(
                f"'{shown}' is exported in namespace {ns} but the module does not import it "
                f'(MODULE_IMPORT_NS("{ns}")): the kernel will refuse to load it; '
                "left alone (it is an export, not converted)"
            )
    usable = frozenset(exports.info) - refused if refused else exports
    return ModuleExports(usable, tuple(notes), tuple(warnings))


def _undefined_names(img: ElfImage) -> set[str]:
    from harness.klp.elfread import SHN_UNDEF, cstring

    syms, strtab = img.symbols(), img.strtab()
    return {
        cstring(strtab, off)
        for idx, (off, shndx) in enumerate(zip(syms.names, syms.shndx, strict=True))
        if idx and off and shndx == SHN_UNDEF
    }
