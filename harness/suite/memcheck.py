"""Live-memory verification of a loaded module's klp relocations: pure functions.

`module_relocs` reads the converted .ko: every klp relocation (`.klp.rela.<obj>.<sec>`,
symbol `.klp.sym.<obj>.<name>,<sympos>`) and the sites the kernel rewrites on purpose after
relocating (ftrace, alternatives, jump labels, feature fixups...: listed in the module's own
tables, per machine in harness.suite.fields). harness.vm.kcore reads in the guest the bytes
the kernel holds at each field (`reads`; on AArch64 also the module's .plt, where far
branches go; on PPC64 the word after each call, the module's .stubs, where every call goes,
and the .toc base, the module's TOC pointer), kept in a `MemoryRecord` (harness.suite.
memrecord; part of the step's transcript). `verify` checks each field against the module's
machine's loader (harness.suite.fields) for the guest's own kallsyms entry of (object, name,
sympos), and the conversion's intent: its predicted address, shifted by the guest's KASLR
offset.

A relocation is verified, in a freed init section (`.init.*`, covered by init having run
without a splat; ppc64 keeps them, so they are read), patched by the kernel (a listed site
whose bytes no longer hold the relocated value), or a mismatch; never skipped. The intent
check needs the conversion's record: it is skipped for a klp symbol without a predicted
address (forced, or in a module object) and for a module whose build recorded none
(converted elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.klp.abi import is_klp_rela, parse_klp_symbol
from harness.klp.elfread import SHF_EXECINSTR, SHT_RELA, ElfImage, cstring
from harness.klp.machines import AARCH64, PPC64
from harness.suite import fields, fields_aarch64, fields_ppc64, fields_x86_64
from harness.suite.assertions import KallsymsIndex
from harness.suite.memrecord import KlpReloc, MemoryRecord, ModuleRelocs, PatchSite

__all__ = [
    "MAX_MISMATCHES",
    "NO_KCORE",
    "VMLINUX",
    "KlpReloc",
    "MemoryRecord",
    "MemoryVerdict",
    "ModuleRelocs",
    "PatchSite",
    "expected_field",
    "is_init",
    "live_address",
    "module_relocs",
    "reads",
    "record_of",
    "verify",
]

VMLINUX = "vmlinux"
NO_KCORE = "cannot verify in memory: no /proc/kcore"
MAX_MISMATCHES = 5  # shown as evidence
# Tables the kernel rewrites in place at load, so a field inside them no longer holds the
# relocated value: static_call_add_module() swaps each trampoline key (__SCT__x) for the key
# (__SCK__x, plus flag bits) and sorts the table; jump_label_sort_entries() sorts the
# entries, which are relative to themselves, and the key field carries flag bits.
REWRITTEN_TABLES = (".static_call_sites", "__jump_table")
PLT = ".plt"  # where arm64 sends branches out of range (the .init.plt is freed with init)
STUBS, TOC = ".stubs", ".toc"  # ppc64: where every call to another object goes; the TOC


@dataclass(frozen=True)
class MemoryVerdict:
    total: int = 0
    verified: int = 0
    init: int = 0
    patched: int = 0
    mismatches: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.mismatches

    @property
    def summary(self) -> str:
        if self.error:
            return self.error
        return (
            f"{self.verified} of {self.total} klp relocations verified in memory "
            f"({self.init} in freed init sections, {self.patched} patched by the kernel)"
        )


def module_relocs(img: ElfImage) -> ModuleRelocs:
    """The klp relocations of a converted module and the sites its tables list."""
    syms = img.symbols()
    strtab = img.strtab()
    values = syms.values()
    relocs: list[KlpReloc] = []
    sites: list[PatchSite] = []
    arm, ppc = img.machine == AARCH64, img.machine == PPC64
    known = fields.site_tables(img.machine.label)
    ranges = fields.range_tables(img.machine.label)
    tables = {s.index: s.name for s in img.sections if s.name in known or s.name in ranges}
    bounds: dict[tuple[str, str, int], list[int]] = {}  # a range table's entry: start, end
    slots = calls = 0
    for sec in img.sections:
        if sec.type != SHT_RELA:
            continue
        relas = img.relas(sec.index)
        target = img.sections[sec.info]
        if arm and target.flags & SHF_EXECINSTR and not target.name.startswith(".init"):
            owners = [syms.shndx[i] for i in relas.symbols()]
            slots += fields_aarch64.plt_slots(relas.types(), owners, sec.info)
        if ppc:  # get_stubs_size(): every SHT_RELA section, klp ones included
            pairs = zip(relas.types(), relas.symbols(), relas.addends(), strict=True)
            calls += len({(y, a) for t, y, a in pairs if t == fields_ppc64.REL24})
        items = zip(relas.offsets(), relas.types(), relas.addends(), relas.symbols(), strict=True)
        if is_klp_rela(img, sec.index):
            for offset, rtype, addend, sym in items:
                parsed = parse_klp_symbol(cstring(strtab, syms.names[sym]))
                if parsed is None:
                    raise ValueError(f"{img.label}: {sec.label}: a symbol without a klp name")
                relocs.append(
                    KlpReloc(
                        sec.name, target.name, offset, rtype, addend, parsed.obj, parsed.name,
                        parsed.sympos,
                    )
                )  # fmt: skip
        elif sec.info in tables and tables[sec.info] in ranges:
            size, start, end = ranges[tables[sec.info]]
            for offset, _, addend, sym in items:
                shndx, at = syms.shndx[sym], offset % size
                if at in (start, end) and 0 < shndx < len(img.sections):
                    where = img.sections[shndx].name
                    # relative to the entry: S + A - P = site - (P - at)
                    key = (tables[sec.info], where, offset - at)
                    bounds.setdefault(key, [-1, -1])[at == end] = values[sym] + addend - at
        elif sec.info in tables:
            name = tables[sec.info]
            size, at, length, length_at = known[name]
            data = img.section_bytes(sec.info)
            for offset, _, addend, sym in items:
                shndx = syms.shndx[sym]
                if (size and offset % size != at) or not 0 < shndx < len(img.sections):
                    continue
                span = length
                if span is None:  # the entry's len byte
                    entry = offset - at + length_at
                    span = data[entry] if entry < len(data) else 16
                where = img.sections[shndx].name
                sites.append(PatchSite(name, where, values[sym] + addend, span))
    for (name, where, _), (low, high) in sorted(bounds.items()):
        if 0 <= low <= high:
            sites.append(PatchSite(name, where, low, high - low))
    size = fields_aarch64.plt_size(slots)
    patchable = sum(s.size // 8 for s in img.sections if s.name == "__patchable_function_entries")
    stubs = fields_ppc64.stubs_size(calls, patchable) if ppc else 0
    has_toc = ppc and any(s.name == TOC for s in img.sections)
    return ModuleRelocs(tuple(relocs), tuple(sites), img.machine.label, size, stubs, has_toc)


def reads(found: ModuleRelocs) -> list[tuple[str, int, int]]:
    """What to read after insmod, as (section, offset, width): each relocated field outside
    freed init sections, in order (a ppc64 call with the word after it), then the .plt when
    the module may have one in use, or a ppc64 module's whole .stubs and the first .toc slot
    (read for its base: the TOC pointer)."""
    label = found.machine
    out = [(r.section, r.offset, fields.read_width(label, r.type)) for r in found.relocs]
    out = [field for field in out if not freed(label, field[0])]
    if found.plt_size:
        out.append((PLT, 0, found.plt_size))
    if found.stubs_size:
        out.append((STUBS, 0, found.stubs_size))
    return [*out, (TOC, 0, 8)] if found.toc else out


def record_of(
    found: ModuleRelocs,
    bases: dict[str, int],
    values: Sequence[bytes],
    error: str,
    predicted: tuple[tuple[str, int | None], ...],
    table_text: int | None,
    symbols: tuple[tuple[str, str, int], ...] = (),
) -> MemoryRecord:
    """The record of one loaded module: `values` are the bytes read for each of `reads(found)`
    (the relocations outside freed init sections, maybe then the .plt or the .stubs and a
    .toc slot; none when `error`)."""
    read = iter(values)
    label = found.machine
    held = tuple("" if freed(label, r.section) or error else next(read).hex() for r in found.relocs)
    plt = next(read, b"").hex() if found.plt_size and not error else ""
    stubs = next(read, b"").hex() if found.stubs_size and not error else ""
    return MemoryRecord(
        error=error,
        relocs=found.relocs,
        sites=found.sites,
        bases=tuple(sorted(bases.items())),
        fields=held,
        predicted=predicted,
        table_text=table_text,
        symbols=symbols,
        machine=found.machine,
        plt=plt,
        stubs=stubs,
    )


def is_init(section: str) -> bool:
    return section.startswith(".init.") or section == ".init"


def freed(machine: str, section: str) -> bool:
    """An init section the machine frees after init (its fields cannot be read)."""
    return is_init(section) and not fields.keeps_init(machine)


def verify(record: MemoryRecord, kallsyms: KallsymsIndex) -> MemoryVerdict:
    """Each relocation against memory, the loader's formula and the conversion's intent."""
    if record.error:
        return MemoryVerdict(total=len(record.relocs), error=record.error)
    total = len(record.relocs)
    bases = dict(record.bases)
    plt = fields.Plt(bases.get(PLT, 0), bytes.fromhex(record.plt))
    toc: int | None = None
    if record.machine == PPC64.label:  # the calls' stubs stand where an arm64 .plt would
        plt = fields.Plt(bases.get(STUBS, 0), bytes.fromhex(record.stubs))
        where = bases.get(TOC, bases.get(STUBS))
        toc = None if where is None else fields_ppc64.my_r2(where)
    predicted = _in_guest(dict(record.predicted), record.table_text, kallsyms)
    verified = init = patched = 0
    bad: list[str] = []
    for index, reloc in enumerate(record.relocs):
        if freed(record.machine, reloc.section):
            init += 1
            continue
        raw = bytes.fromhex(record.fields[index]) if index < len(record.fields) else b""
        problem = _check(record.machine, reloc, raw, bases, kallsyms, record.symbols, plt, toc)
        if problem is None:
            problem = _intent(reloc, kallsyms, predicted, record.symbols)
            if problem is None:
                verified += 1
                continue
        elif reloc.section in REWRITTEN_TABLES or _patched(reloc, record):
            patched += 1
            continue
        bad.append(problem)
    return MemoryVerdict(total, verified, init, patched, tuple(bad))


def live_address(
    reloc: KlpReloc, kallsyms: KallsymsIndex, symbols: tuple[tuple[str, str, int], ...] = ()
) -> int | None:
    """The guest's kallsyms entry for (object, name, sympos), as the kernel resolves it:
    position 0 must be unique, N is the Nth of that name in the object's kallsyms order.
    A module object's entries come from `symbols` (read while it was loaded)."""
    if reloc.obj == VMLINUX:
        entries = [e.address for e in kallsyms.vmlinux.get(reloc.name, [])]
    else:
        entries = [a for o, n, a in symbols if o == reloc.obj and n == reloc.name]
    if reloc.sympos == 0:
        return entries[0] if len(entries) == 1 else None
    return entries[reloc.sympos - 1] if reloc.sympos <= len(entries) else None


def expected_field(reloc: KlpReloc, symbol: int, place: int) -> int:
    """The loader's value (x86-64 apply_relocate_add) at the field's width, unsigned."""
    return fields_x86_64.expected(reloc.type, reloc.addend, symbol, place)


def _check(
    machine: str,
    reloc: KlpReloc,
    raw: bytes,
    bases: dict[str, int],
    kallsyms: KallsymsIndex,
    symbols: tuple[tuple[str, str, int], ...],
    plt: fields.Plt,
    toc: int | None,
) -> str | None:
    base = bases.get(reloc.section)
    if base is None:
        return f"{reloc.label} ({reloc.symbol}): no loaded address for {reloc.section}"
    width = fields.width(machine, reloc.type)
    if not width:
        if fields.is_none(machine, reloc.type):
            return None
        return f"{reloc.label}: {fields.machine(machine).reloc_name(reloc.type)}"
    if len(raw) != fields.read_width(machine, reloc.type):
        return f"{reloc.label} ({reloc.symbol}): field not read from memory"
    symbol = live_address(reloc, kallsyms, symbols)
    place = base + reloc.offset
    if symbol is None:
        held = fields.meaning(machine, reloc.type, reloc.addend, raw, place, plt)
        return f"{reloc.label} ({reloc.symbol}): no such entry in the guest's kallsyms; {held}"
    problem = fields.problem(machine, reloc.type, reloc.addend, raw, place, symbol, plt, toc)
    if problem is None:
        return None
    return (
        f"{reloc.label} at {place:#x} ({reloc.symbol}): {problem}, "
        f"kallsyms has {reloc.symbol} at {symbol:#x}"
    )


def _in_guest(
    predicted: dict[str, int | None], table_text: int | None, kallsyms: KallsymsIndex
) -> dict[str, int | None]:
    """The predicted addresses moved by the guest's KASLR offset (guest `_text` minus the
    table's); the per-cpu offsets below `_text` (this_cpu_off, ...) do not move. Empty when
    the offset is unknown: intent is then not checked."""
    entries = kallsyms.vmlinux.get("_text")
    if table_text is None or not entries:
        return {}
    shift = entries[0].address - table_text
    return {k: v if v is None or v < table_text else v + shift for k, v in predicted.items()}


def _intent(
    reloc: KlpReloc,
    kallsyms: KallsymsIndex,
    predicted: dict[str, int | None],
    symbols: tuple[tuple[str, str, int], ...],
) -> str | None:
    """The live target against what the conversion meant, as moved into the guest
    (skipped when it recorded nothing)."""
    if not predicted:
        return None
    symbol = live_address(reloc, kallsyms, symbols)
    if reloc.symbol in predicted:
        meant = predicted[reloc.symbol]
        if meant is None or symbol is None or meant == symbol:
            return None
        return (
            f"{reloc.label} ({reloc.symbol}): memory points at {symbol:#x}, the conversion "
            f"meant {meant:#x}"
        )
    same = [k for k in predicted if k.rsplit(",", 1)[0] == f"{reloc.obj}.{reloc.name}"]
    if not same:
        return f"{reloc.label} ({reloc.symbol}): a klp symbol the conversion did not make"
    meant = predicted[same[0]]
    where = "" if meant is None else f" at {meant:#x}"
    held = "?" if symbol is None else f"{symbol:#x}"
    return (
        f"{reloc.label} ({reloc.symbol}): memory points at {held}, the conversion meant "
        f"{same[0]}{where}"
    )


def _patched(reloc: KlpReloc, record: MemoryRecord) -> bool:
    start, end = reloc.offset, reloc.offset + max(fields.width(record.machine, reloc.type), 1)
    return any(
        s.section == reloc.section and s.offset < end and start < s.offset + s.length
        for s in record.sites
    )
