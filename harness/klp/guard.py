"""The livepatch guard: a converted module refuses to load on a kernel without livepatch.

Without CONFIG_LIVEPATCH the module loader skips every `.klp.rela` section silently (the
stub klp_apply_section_relocs() returns 0), so a converted module would load with its
references to unexported symbols left at 0. The guard is an undefined reference to
`klp_enable_patch`, which only CONFIG_LIVEPATCH kernels export: elsewhere the loader stops
at `<module>: Unknown symbol klp_enable_patch (err -2)` before any relocation or code runs.
Its `__versions` entry carries the target's CRC, so modversions kernels print nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import compress, count
from pathlib import Path

from harness.errors import LivepatchGuardError
from harness.klp.elfread import SHN_UNDEF, ElfImage
from harness.klp.files import printable
from harness.klp.tables import Symbols

GUARD_SYMBOL = "klp_enable_patch"  # EXPORT_SYMBOL_GPL in kernel/livepatch/core.c
# include/linux/license.h license_is_gpl_compatible(): any other license makes the kernel
# treat the module as proprietary, and GPL-only exports are then not found for it.
GPL_COMPATIBLE = frozenset(
    {
        "GPL",
        "GPL v2",
        "GPL and additional rights",
        "Dual BSD/GPL",
        "Dual MIT/GPL",
        "Dual MPL/GPL",
    }
)
VERSIONS = "__versions"  # struct modversion_info[]: unsigned long crc; char name[56]
EXT_CRCS, EXT_NAMES = "__version_ext_crcs", "__version_ext_names"  # EXTENDED_MODVERSIONS
MODVERSION_NAME = 64 - 8


@dataclass(frozen=True)
class GuardPlan:
    """What the rewrite adds: the undefined symbol and bytes appended to version sections."""

    symbol: str
    appends: tuple[tuple[int, bytes], ...]  # (section index, bytes to append)


def plan_guard(
    img: ElfImage, syms: Symbols, strtab: bytes, versions: Mapping[str, int] | None
) -> GuardPlan | None:
    """The guard to add to `img`, or None when it already references the guard symbol
    (a livepatch module calls klp_enable_patch itself). `versions`: the target's
    Module.symvers CRCs; without klp_enable_patch among them the target has no livepatch
    and no version entry is needed (the symbol is not found before versions are checked)."""
    if _references(syms, strtab, GUARD_SYMBOL):
        return None
    label = img.label
    licenses = [i.removeprefix("license=") for i in img.modinfo() if i.startswith("license=")]
    # No license at all: one object of a module whose MODULE_LICENSE is in another file.
    if licenses and not any(lic in GPL_COMPATIBLE for lic in licenses):
        raise LivepatchGuardError(
            f'{label}: MODULE_LICENSE("{printable(licenses[0])}") is not GPL-compatible, and '
            f"the livepatch guard is a reference to {GUARD_SYMBOL} (EXPORT_SYMBOL_GPL); give "
            "--no-livepatch-guard to convert without it (on a kernel without CONFIG_LIVEPATCH "
            "the module would then load with its klp references left at 0)"
        )
    sections = {sec.name: sec.index for sec in img.sections}
    has_versions = any(name in sections for name in (VERSIONS, EXT_CRCS))
    if not has_versions:
        return GuardPlan(GUARD_SYMBOL, ())  # modpost (a .o) or the kernel needs no entry
    if versions is None:
        raise LivepatchGuardError(
            f"{label}: has symbol versions (CONFIG_MODVERSIONS) but no CRC of {GUARD_SYMBOL} "
            "is known: give the target's Module.symvers (--symvers FILE or --kernel SPEC)"
        )
    crc = versions.get(GUARD_SYMBOL)
    if crc is None:
        return GuardPlan(GUARD_SYMBOL, ())
    appends: list[tuple[int, bytes]] = []
    if VERSIONS in sections:
        name = GUARD_SYMBOL.encode().ljust(MODVERSION_NAME, b"\0")
        appends.append((sections[VERSIONS], struct.pack("<Q", crc) + name))
    if EXT_CRCS in sections and EXT_NAMES in sections:
        appends.append((sections[EXT_CRCS], struct.pack("<I", crc)))
        appends.append((sections[EXT_NAMES], GUARD_SYMBOL.encode() + b"\0"))
    return GuardPlan(GUARD_SYMBOL, tuple(appends))


def _references(syms: Symbols, strtab: bytes, name: str) -> bool:
    wanted = name.encode() + b"\0"
    size = len(wanted)
    names = syms.names
    for idx in compress(count(), map(SHN_UNDEF.__eq__, syms.shndx)):
        offset = names[idx]
        if idx and offset and strtab[offset : offset + size] == wanted:
            return True
    return False


def guard_of(img: ElfImage) -> bool:
    """Whether `img` carries the guard (or calls klp_enable_patch itself)."""
    return _references(img.symbols(), img.strtab(), GUARD_SYMBOL)


def module_is_guarded(path: Path) -> bool:
    return guard_of(ElfImage.load(path))
