"""Live-memory verification of a loaded module's klp relocations: pure functions.

`module_relocs` reads the converted .ko: every klp relocation (`.klp.rela.<obj>.<sec>`,
symbol `.klp.sym.<obj>.<name>,<sympos>`) and the sites the kernel rewrites on purpose after
relocating (ftrace, alternatives, jump labels, ...: listed in the module's own tables, per
machine in harness.suite.fields). harness.vm.kcore reads in the guest the bytes the kernel
holds at each field (`reads`; on AArch64 also the module's .plt, where far branches go), kept
in a `MemoryRecord` (part of the step's transcript). `verify` checks each field against the
module's machine's loader (harness.suite.fields) for the guest's own kallsyms entry of
(object, name, sympos), and the conversion's intent: its predicted address, shifted by the
guest's KASLR offset.

A relocation is verified, in a freed init section (`.init.*`, covered by init having run
without a splat), patched by the kernel (a listed site whose bytes no longer hold the
relocated value), or a mismatch; never skipped. The intent check needs the conversion's
record: it is skipped for a klp symbol without a predicted address (forced, or in a module
object) and for a module whose build recorded none (converted elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.klp.abi import is_klp_rela, parse_klp_symbol
from harness.klp.elfread import SHF_EXECINSTR, SHT_RELA, ElfImage, cstring
from harness.klp.machines import AARCH64, X86_64
from harness.suite import fields, fields_aarch64, fields_x86_64
from harness.suite.assertions import KallsymsIndex
from harness.suite.jsonfields import json_int, json_str

VMLINUX = "vmlinux"
NO_KCORE = "cannot verify in memory: no /proc/kcore"
MAX_MISMATCHES = 5  # shown as evidence
# Tables the kernel rewrites in place at load, so a field inside them no longer holds the
# relocated value: static_call_add_module() swaps each trampoline key (__SCT__x) for the key
# (__SCK__x, plus flag bits) and sorts the table; jump_label_sort_entries() sorts the
# entries, which are relative to themselves, and the key field carries flag bits.
REWRITTEN_TABLES = (".static_call_sites", "__jump_table")
PLT = ".plt"  # where arm64 sends branches out of range (the .init.plt is freed with init)


@dataclass(frozen=True)
class KlpReloc:
    rela: str  # ".klp.rela.vmlinux..text"
    section: str  # the section it writes into (sh_info)
    offset: int
    type: int
    addend: int
    obj: str
    name: str
    sympos: int

    @property
    def label(self) -> str:
        return f"{self.rela}+{self.offset:#x}"

    @property
    def symbol(self) -> str:
        return f"{self.obj}.{self.name},{self.sympos}"

    @property
    def width(self) -> int:  # x86-64 (0-42) or AArch64 (256-); per machine: see `reads`
        return fields_x86_64.width(self.type) or fields_aarch64.width(self.type)


@dataclass(frozen=True)
class PatchSite:
    table: str
    section: str
    offset: int
    length: int


@dataclass(frozen=True)
class ModuleRelocs:
    relocs: tuple[KlpReloc, ...]
    sites: tuple[PatchSite, ...]
    machine: str = X86_64.label
    plt_size: int = 0  # bytes the loader may use of the module's .plt (0: no .plt to read)


@dataclass(frozen=True)
class MemoryRecord:
    """What the step read: the .ko's klp relocations, the loaded section bases, the bytes at
    each field (hex, "" where not read), and the conversion's intent."""

    error: str = ""  # why memory was not read (e.g. NO_KCORE); a failed verification
    relocs: tuple[KlpReloc, ...] = ()
    sites: tuple[PatchSite, ...] = ()
    bases: tuple[tuple[str, int], ...] = ()  # /sys/module/<m>/sections
    fields: tuple[str, ...] = ()  # per relocation
    predicted: tuple[tuple[str, int | None], ...] = ()  # "vmlinux.name,pos" -> table address
    table_text: int | None = None  # `_text` in the table the conversion used
    # kallsyms entries (object, name, address) of module objects the klp symbols name, read
    # while loaded (the guest's kallsyms is read once per boot, maybe after they unload)
    symbols: tuple[tuple[str, str, int], ...] = ()
    machine: str = X86_64.label  # the module's (MACHINES labels)
    plt: str = ""  # hex: the bytes read at the module's .plt (its base is in `bases`)

    def to_json(self) -> dict[str, Any]:
        # the fields AArch64 added only when set: x86-64 records stay as they were written
        extra = {"machine": self.machine, "plt": self.plt} if self.machine != X86_64.label else {}
        return {
            "error": self.error,
            "relocs": [list(_reloc_tuple(r)) for r in self.relocs],
            "sites": [[s.table, s.section, s.offset, s.length] for s in self.sites],
            "bases": [list(b) for b in self.bases],
            "fields": list(self.fields),
            "predicted": [list(p) for p in self.predicted],
            "table_text": self.table_text,
            "symbols": [list(s) for s in self.symbols],
            **extra,
        }

    @classmethod
    def from_json(cls, data: Any) -> MemoryRecord:
        """Raises TypeError/ValueError/KeyError on anything malformed (the transcript's caller
        turns those into one line)."""
        relocs = tuple(_reloc(item) for item in data["relocs"])
        held = tuple(bytes.fromhex(json_str(f)).hex() for f in data["fields"])
        if held and len(held) != len(relocs):
            raise ValueError("memory: one field per relocation")
        text = data["table_text"]
        return cls(
            error=json_str(data["error"]),
            relocs=relocs,
            sites=tuple(
                PatchSite(json_str(t), json_str(s), json_int(o), json_int(n))
                for t, s, o, n in data["sites"]
            ),
            bases=tuple((json_str(n), json_int(a)) for n, a in data["bases"]),
            fields=held,
            predicted=tuple(
                (json_str(n), None if a is None else json_int(a)) for n, a in data["predicted"]
            ),
            table_text=None if text is None else json_int(text),
            symbols=tuple(
                (json_str(o), json_str(n), json_int(a)) for o, n, a in data.get("symbols", [])
            ),
            machine=fields.machine(json_str(data.get("machine", X86_64.label))).label,
            plt=bytes.fromhex(json_str(data.get("plt", ""))).hex(),
        )


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
    arm = img.machine == AARCH64
    known = fields.site_tables(img.machine.label)
    tables = {s.index: s.name for s in img.sections if s.name in known}
    slots = 0
    for sec in img.sections:
        if sec.type != SHT_RELA:
            continue
        relas = img.relas(sec.index)
        target = img.sections[sec.info]
        if arm and target.flags & SHF_EXECINSTR and not target.name.startswith(".init"):
            owners = [syms.shndx[i] for i in relas.symbols()]
            slots += fields_aarch64.plt_slots(relas.types(), owners, sec.info)
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
    size = fields_aarch64.plt_size(slots)
    return ModuleRelocs(tuple(relocs), tuple(sites), img.machine.label, size)


def reads(found: ModuleRelocs) -> list[tuple[str, int, int]]:
    """What to read after insmod, as (section, offset, width): each relocated field outside
    freed init sections, in order, then the .plt when the module may have one in use."""
    out = [(r.section, r.offset, fields.width(found.machine, r.type)) for r in found.relocs]
    out = [field for field in out if not is_init(field[0])]
    return [*out, (PLT, 0, found.plt_size)] if found.plt_size else out


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
    (the relocations outside freed init sections, maybe then the .plt; none when `error`)."""
    read = iter(values)
    fields = tuple("" if is_init(r.section) or error else next(read).hex() for r in found.relocs)
    plt = next(read, b"").hex() if found.plt_size and not error else ""
    return MemoryRecord(
        error=error,
        relocs=found.relocs,
        sites=found.sites,
        bases=tuple(sorted(bases.items())),
        fields=fields,
        predicted=predicted,
        table_text=table_text,
        symbols=symbols,
        machine=found.machine,
        plt=plt,
    )


def is_init(section: str) -> bool:
    return section.startswith(".init.") or section == ".init"


def verify(record: MemoryRecord, kallsyms: KallsymsIndex) -> MemoryVerdict:
    """Each relocation against memory, the loader's formula and the conversion's intent."""
    if record.error:
        return MemoryVerdict(total=len(record.relocs), error=record.error)
    total = len(record.relocs)
    bases = dict(record.bases)
    plt = fields.Plt(bases.get(PLT, 0), bytes.fromhex(record.plt))
    predicted = _in_guest(dict(record.predicted), record.table_text, kallsyms)
    verified = init = patched = 0
    bad: list[str] = []
    for index, reloc in enumerate(record.relocs):
        if is_init(reloc.section):
            init += 1
            continue
        raw = bytes.fromhex(record.fields[index]) if index < len(record.fields) else b""
        problem = _check(record.machine, reloc, raw, bases, kallsyms, record.symbols, plt)
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
) -> str | None:
    base = bases.get(reloc.section)
    if base is None:
        return f"{reloc.label} ({reloc.symbol}): no loaded address for {reloc.section}"
    width = fields.width(machine, reloc.type)
    if not width:
        if fields.is_none(machine, reloc.type):
            return None
        return f"{reloc.label}: {fields.machine(machine).reloc_name(reloc.type)}"
    if len(raw) != width:
        return f"{reloc.label} ({reloc.symbol}): field not read from memory"
    symbol = live_address(reloc, kallsyms, symbols)
    place = base + reloc.offset
    if symbol is None:
        held = fields.meaning(machine, reloc.type, reloc.addend, raw, place, plt)
        return f"{reloc.label} ({reloc.symbol}): no such entry in the guest's kallsyms; {held}"
    problem = fields.problem(machine, reloc.type, reloc.addend, raw, place, symbol, plt)
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


def _reloc_tuple(r: KlpReloc) -> tuple[str, str, int, int, int, str, str, int]:
    return (r.rela, r.section, r.offset, r.type, r.addend, r.obj, r.name, r.sympos)


def _reloc(item: Any) -> KlpReloc:
    rela, section, offset, rtype, addend, obj, name, sympos = item
    return KlpReloc(
        json_str(rela), json_str(section), json_int(offset), json_int(rtype), json_int(addend),
        json_str(obj), json_str(name), json_int(sympos),
    )  # fmt: skip
