"""Per machine, what its module loader writes at a relocated field (harness.suite.fields_x86_64,
fields_aarch64, fields_ppc64) and which of the module's tables list sites the kernel rewrites after
relocating: the choice harness.suite.memcheck makes by the module's machine label."""

from __future__ import annotations

from harness.klp.machines import AARCH64, MACHINES, PPC64, X86_64, Machine
from harness.suite import fields_aarch64, fields_ppc64, fields_x86_64
from harness.suite.fields_aarch64 import Plt

__all__ = [
    "Plt",
    "is_none",
    "keeps_init",
    "machine",
    "meaning",
    "problem",
    "range_tables",
    "read_width",
    "site_tables",
    "width",
]

# Tables of sites the kernel rewrites after relocation: entry size, where in the entry the
# site's relocation is, the site's length, or None: the byte at entry + the 4th item.
SiteTables = dict[str, tuple[int, int, int | None, int]]
SITE_TABLES_X86_64: SiteTables = {
    "__mcount_loc": (8, 0, 5, 0),
    ".return_sites": (4, 0, 6, 0),
    ".retpoline_sites": (4, 0, 6, 0),
    ".call_sites": (4, 0, 6, 0),
    ".ibt_endbr_seal": (4, 0, 4, 0),
    ".smp_locks": (4, 0, 1, 0),
    ".static_call_sites": (8, 0, 5, 0),
    "__jump_table": (16, 0, 5, 0),
    ".parainstructions": (16, 0, None, 9),  # paravirt's len byte
    ".altinstructions": (0, 0, 16, 0),  # entry size varies by version: every site relocation
}
# arm64: ftrace's two NOPs per function (-fpatchable-function-entry=2, the kernel's ftrace
# call sites), jump labels (a NOP or B), alternatives (struct alt_instr: orig_offset,
# alt_offset, cpucap u16, orig_len u8 at 10); module_finalize() applies them after relocating.
SITE_TABLES_AARCH64: SiteTables = {
    "__patchable_function_entries": (8, 0, 8, 0),
    "__jump_table": (16, 0, 4, 0),
    ".altinstructions": (12, 0, None, 10),
}
# ppc64: ftrace's `bl _mcount` (MPROFILE_KERNEL; or the patchable-entry NOPs), jump labels
# (struct jump_entry: code, target, key relative), barrier_nospec sites (.8byte site - .);
# module_finalize() and ftrace rewrite them after relocating.
SITE_TABLES_PPC64: SiteTables = {
    "__mcount_loc": (8, 0, 4, 0),
    "__patchable_function_entries": (8, 0, 8, 0),
    "__jump_table": (16, 0, 4, 0),
    "__spec_barrier_fixup": (8, 0, 4, 0),
    "__lwsync_fixup": (8, 0, 4, 0),  # FTR_ENTRY_OFFSET site - . (MAKE_LWSYNC_SECTION_ENTRY)
}
# ppc64 feature fixups (struct fixup_entry, 48 bytes: mask, value, start_off, end_off,
# alt_start_off, alt_end_off, each offset relative to the entry): module_finalize()'s
# do_feature_fixups rewrite [start, end). Entry size, start's and end's place.
RangeTables = dict[str, tuple[int, int, int]]
RANGE_TABLES_PPC64: RangeTables = {
    name: (48, 16, 24) for name in ("__ftr_fixup", "__mmu_ftr_fixup", "__fw_ftr_fixup")
}
NONE_TYPES = {
    X86_64.label: frozenset({0}),
    AARCH64.label: frozenset({0, 256}),
    PPC64.label: frozenset({fields_ppc64.TOCSAVE}),  # a marker: nothing written
}


def machine(label: str) -> Machine:
    """The machine a record names; ValueError for a label harness.klp.machines lacks."""
    for known in MACHINES.values():
        if known.label == label:
            return known
    raise ValueError(f"memory: machine {label!r}")


def site_tables(label: str) -> SiteTables:
    if label == PPC64.label:
        return SITE_TABLES_PPC64
    return SITE_TABLES_AARCH64 if label == AARCH64.label else SITE_TABLES_X86_64


def range_tables(label: str) -> RangeTables:
    return RANGE_TABLES_PPC64 if label == PPC64.label else {}


def keeps_init(label: str) -> bool:
    """ppc64 never frees `.init.*` (module_init_section() is false): those fields stay readable."""
    return label == PPC64.label


def is_none(label: str, rtype: int) -> bool:
    """A NONE relocation: the loader writes nothing (R_X86_64_NONE, R_ARM/AARCH64_NONE)."""
    return rtype in NONE_TYPES.get(label, frozenset())


def width(label: str, rtype: int) -> int:
    """The field's width in bytes (0: nothing written, or a type the loader refuses)."""
    return machine(label).loader.get(rtype, 0)


def read_width(label: str, rtype: int) -> int:
    """The bytes a checker reads at the field: a ppc64 call also needs the TOC restore after it."""
    if label == PPC64.label and rtype == fields_ppc64.REL24:
        return 8
    return width(label, rtype)


def problem(
    label: str,
    rtype: int,
    addend: int,
    raw: bytes,
    place: int,
    symbol: int,
    plt: Plt,
    toc: int | None = None,
) -> str | None:
    """None when `raw` at `place` holds what the machine's loader writes for `symbol`. `plt`:
    the bytes read of an arm64 module's .plt, or of a ppc64 module's .stubs; `toc`: a ppc64
    module's TOC pointer."""
    if label == X86_64.label:
        return fields_x86_64.problem(rtype, addend, raw, place, symbol)
    if label == AARCH64.label:
        return fields_aarch64.problem(rtype, addend, raw, place, symbol, plt)
    if label == PPC64.label:
        return fields_ppc64.problem(rtype, addend, raw, place, symbol, plt, toc)
    return f"no decoder for {label} fields here"


def meaning(label: str, rtype: int, addend: int, raw: bytes, place: int, plt: Plt) -> str:
    """What `raw` at `place` stands for, as evidence."""
    if label == X86_64.label:
        return fields_x86_64.meaning(rtype, addend, raw, place)
    if label == AARCH64.label:
        return fields_aarch64.meaning(rtype, addend, raw, place, plt)
    if label == PPC64.label:
        return fields_ppc64.meaning(rtype, addend, raw, place, plt)
    return f"memory holds {raw.hex()}"
