"""Load an original module and its conversion at the same section bases and compare the
relocated section images byte for byte; every difference comes back classified."""

from __future__ import annotations

from dataclasses import dataclass, field

from oracle.elf import SHN_UNDEF, SHT_NOBITS, SHT_RELA, STB_WEAK, Elf
from oracle.loader import (
    NONALLOC_AREA,
    TYPE_NAMES,
    KernelTable,
    Loaded,
    LoadError,
    load,
    section_bases,
)

# Difference kinds, each a different way the conversion could be wrong.
LOAD_ORIGINAL = "original refused by the simulated loader"
LOAD_CONVERTED = "converted refused by the simulated loader"
SECTIONS = "allocated sections differ"
IMAGE = "relocated image differs"
UNCONVERTED = "vmlinux reference left unconverted"


@dataclass(frozen=True)
class Difference:
    kind: str
    detail: str


@dataclass
class Verdict:
    klp_relocations: int = 0  # applied from .klp.rela.vmlinux.* sections of the conversion
    ordinary_relocations: int = 0  # applied from the original
    sections: int = 0  # allocated sections compared
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def compare(
    original: bytes,
    converted: bytes,
    table: KernelTable,
    module_exports: frozenset[str],
    seed: int,
    label: str = "<module>",
    guard_crc: int | None = None,
) -> Verdict:
    old, new = Elf(original, label), Elf(converted, label + " (converted)")
    verdict = Verdict()
    bases = section_bases(old, seed)
    old_alloc = _alloc_layout(old)
    new_alloc = _alloc_layout(new)
    guarded = _accept_guard_entry(old_alloc, new_alloc, guard_crc)
    if old_alloc != new_alloc:
        changed = sorted(set(old_alloc.items()) ^ set(new_alloc.items()))
        verdict.differences.append(Difference(SECTIONS, ", ".join(map(str, changed[:4]))))
        return verdict
    extra = NONALLOC_AREA + 0x100000000
    for key in new.section_keys():
        if key not in bases:  # sections the conversion added (never allocated, checked above)
            bases[key] = extra
            extra += 0x100000000
    before = _load(old, bases, table, module_exports, LOAD_ORIGINAL, verdict)
    after = _load(new, bases, table, module_exports, LOAD_CONVERTED, verdict)
    verdict.differences += _unconverted(new, table, module_exports)
    if before is None or after is None:
        return verdict
    verdict.ordinary_relocations = before.ordinary_relocations
    verdict.klp_relocations = after.klp_relocations
    if after.skipped_objects:
        objs = ", ".join(sorted(after.skipped_objects))
        verdict.differences.append(Difference(IMAGE, f".klp.rela sections for modules {objs}"))
    differing = [
        k
        for k in old_alloc
        if before.images[k] != after.images[k][: len(before.images[k]) if k in guarded else None]
    ]
    verdict.sections = len(old_alloc)
    if differing:
        # load again, recording which relocation wrote each field, to say what differs
        before = load(old, bases, table, module_exports, record=True)
        after = load(new, bases, table, module_exports, record=True)
        for key in differing:
            verdict.differences.append(Difference(IMAGE, _explain(key, before, after)))
    return verdict


# The livepatch guard (harness.klp.guard) appends one struct modversion_info to __versions:
# an 8-byte CRC and the name klp_enable_patch in 56 bytes, NUL-padded.
GUARD, MODVERSION_INFO = b"klp_enable_patch", 64


def _accept_guard_entry(
    old: dict[tuple[str, int], tuple[int, int, bytes]],
    new: dict[tuple[str, int], tuple[int, int, bytes]],
    crc: int | None,
) -> set[tuple[str, int]]:
    """Count a __versions that is the original's plus exactly the guard's entry (with `crc`,
    when known) as unchanged: the loader checks the guard symbol's version with it. Returns
    the keys so accepted (their images are compared up to the original's size)."""
    accepted: set[tuple[str, int]] = set()
    for key, (_, size, data) in new.items():
        if key[0] != "__versions" or key not in old:
            continue
        _, old_size, old_data = old[key]
        entry = data[old_size:]
        if size != old_size + MODVERSION_INFO or data[:old_size] != old_data:
            continue
        if entry[8:] == GUARD.ljust(MODVERSION_INFO - 8, b"\0") and (
            crc is None or int.from_bytes(entry[:8], "little") == crc
        ):
            new[key] = old[key]
            accepted.add(key)
    return accepted


def _alloc_layout(elf: Elf) -> dict[tuple[str, int], tuple[int, int, bytes]]:
    """ALLOC sections (not relocation sections) by identity: type, size, unrelocated bytes."""
    return {
        key: (sec.type, sec.size, b"" if sec.type == SHT_NOBITS else elf.contents(sec))
        for key, sec in zip(elf.section_keys(), elf.sections, strict=True)
        if sec.alloc and sec.type != SHT_RELA
    }


def _load(
    elf: Elf,
    bases: dict[tuple[str, int], int],
    table: KernelTable,
    module_exports: frozenset[str],
    kind: str,
    verdict: Verdict,
) -> Loaded | None:
    try:
        return load(elf, bases, table, module_exports)
    except LoadError as err:
        verdict.differences.append(Difference(kind, str(err)))
        return None


def _unconverted(elf: Elf, table: KernelTable, module_exports: frozenset[str]) -> list[Difference]:
    names = sorted(
        {
            s.name
            for s in elf.symbols
            if s.shndx == SHN_UNDEF
            and s.name
            and s.bind != STB_WEAK
            and s.name not in module_exports
            and s.name in table.entries
        }
    )
    return [Difference(UNCONVERTED, ", ".join(names[:8]))] if names else []


def _explain(key: tuple[str, int], before: Loaded, after: Loaded) -> str:
    a, b = before.images[key], after.images[key]
    offsets = [i for i in range(len(a)) if a[i] != b[i]]
    notes: list[str] = []
    seen: set[int] = set()
    for off in offsets:
        start = _field_start(key, off, before, after)
        if start in seen:
            continue
        seen.add(start)
        was, now = before.fields.get((key, start)), after.fields.get((key, start))
        what = [
            f"{'klp ' if f.klp else ''}R_X86_64_{TYPE_NAMES.get(f.rtype, f.rtype)} {f.symbol}"
            if f
            else "unwritten"
            for f in (was, now)
        ]
        notes.append(f"+{start:#x}: original {what[0]}, converted {what[1]}")
        if len(notes) == 3:
            break
    return f"{key[0]}: {len(offsets)} byte(s) differ; " + "; ".join(notes)


def _field_start(key: tuple[str, int], off: int, before: Loaded, after: Loaded) -> int:
    for start in range(off, max(off - 8, -1), -1):
        if (key, start) in before.fields or (key, start) in after.fields:
            return start
    return off
