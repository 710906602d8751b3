"""The kernel's klp relocation ABI, shared by convert, rewrite and inspect: names, markers and
the relocation types each machine's module loader applies (harness.klp.machines)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import NotElfError, RelocationTypeError, UnsupportedElfError
from harness.klp.elfread import (
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHT_NOBITS,
    ElfImage,
)
from harness.klp.files import printable
from harness.klp.machines import X86_64
from harness.klp.tables import Relas

KLP_SYM_PREFIX = ".klp.sym."
KLP_RELA_PREFIX = ".klp.rela."
ANNOTATION_PREFIX = ".klp.module_relocs."
KLP_RELA_FLAGS = SHF_RELA_LIVEPATCH | SHF_ALLOC | SHF_INFO_LINK  # "AIo", as in module-elf-format
ANNOTATION_ENTRY = 12  # packed {void *sym; u32 sympos}
MODULE_NAME_MAX = 55  # sscanf("%55[^.]") in klp_resolve_symbols()
KSYM_NAME_MAX = 511  # %511[^,] since v6.1 (KSYM_NAME_LEN 512)
KSYM_NAME_MAX_OLD = 127  # before v6.1

# The relocation types x86-64's apply_relocate_add() applies (arch/x86/kernel/module.c), with
# the width of the field each writes; on any other type the module fails to load.
# (Other machines: harness.klp.machines; ElfImage.machine is the file's.)
LOADER_RELOCS = X86_64.loader  # NONE 64 PC32 PLT32 32 32S PC64
LOADER_RELOC_NAMES = X86_64.accepted_names
REFUSED_BY_LOADER = X86_64.refused

# kernel: sscanf(name, ".klp.sym.%55[^.].%511[^,],%lu"); the number may be followed by anything.
_KLP_SYM = re.compile(r"\.klp\.sym\.([^.]{1,55})\.([^,]{1,511}),(\d+)")
_KLP_RELA = re.compile(r"\.klp\.rela\.([^.]{1,55})")


@dataclass(frozen=True)
class KlpName:
    obj: str
    name: str
    sympos: int


def klp_symbol_name(obj: str, name: str, sympos: int) -> str:
    return f"{KLP_SYM_PREFIX}{obj}.{name},{sympos}"


def klp_rela_name(obj: str, target_section: str) -> str:
    return f"{KLP_RELA_PREFIX}{obj}.{target_section}"


def parse_klp_symbol(name: str) -> KlpName | None:
    """Parse like the kernel's sscanf; None when it would report a malformed name."""
    m = _KLP_SYM.match(name)
    if not m:
        return None
    return KlpName(m.group(1), m.group(2), int(m.group(3)))


def parse_klp_rela(name: str) -> str | None:
    m = _KLP_RELA.match(name)
    return m.group(1) if m else None


def check_names(path: object, obj: str, name: str) -> list[str]:
    """Errors the kernel's parser would hit (raised) and warnings (returned).
    `path` is shown as given: pass it escaped (ElfImage.label)."""
    if not obj or "." in obj or len(obj) > MODULE_NAME_MAX:
        raise UnsupportedElfError(
            f"{path}: object name {obj!r} cannot be encoded (at most {MODULE_NAME_MAX} "
            "characters, no dot)"
        )
    if "," in name or len(name) > KSYM_NAME_MAX:
        raise UnsupportedElfError(
            f"{path}: symbol name {name[:60]!r} cannot be encoded (a comma, or longer than "
            f"{KSYM_NAME_MAX} characters)"
        )
    if len(name) > KSYM_NAME_MAX_OLD:
        return [
            f"symbol name {printable(name[:60])}... is longer than {KSYM_NAME_MAX_OLD} "
            "characters: kernels before 6.1 cannot resolve it"
        ]
    return []


def is_klp_rela(img: ElfImage, index: int) -> bool:
    sec = img.sections[index]
    return bool(sec.flags & SHF_RELA_LIVEPATCH) or sec.name.startswith(KLP_RELA_PREFIX)


def check_relocations(img: ElfImage, index: int, moved: Relas, names: Callable[[int], str]) -> None:
    """Refuse relocations (`moved`, from rela section `index`) that would become klp
    relocations but that the loader refuses, or whose field lies outside the target section.
    `names` gives a symbol index's name for the message."""
    sec = img.sections[index]
    target = img.sections[sec.info]
    types = moved.types()
    machine = img.machine
    loader = machine.loader
    if not set(types).issubset(loader):
        i = next(i for i, rtype in enumerate(types) if rtype not in loader)
        offset = moved.offsets()[i]
        raise RelocationTypeError(
            f"{img.label}: {sec.label}+{offset:#x}: {machine.reloc_name(types[i])} against "
            f"'{printable(names(moved.symbols()[i]))}' {machine.refused}"
        )
    if target.type == SHT_NOBITS and len(moved):
        raise NotElfError(f"{img.label}: relocations in {sec.label} against a NOBITS section")
    offsets = moved.offsets()
    # the common case at C speed: even the widest field at the largest offset fits
    if not offsets or max(offsets) + 8 <= target.size:
        return
    widths = map(loader.__getitem__, types)
    if any(off + width > target.size for off, width in zip(offsets, widths, strict=True)):
        raise NotElfError(f"{img.label}: a relocation in {sec.label} is outside {target.label}")
