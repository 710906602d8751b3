"""List a module's klp relocations and judge them offline, as the kernel's resolver would.

Mirrors kernel/livepatch/core.c (klp_resolve_symbols, klp_find_object_symbol) and
kernel/module/main.c (apply_relocations: `.klp.rela.vmlinux.*` for any module since
v5.8; `.klp.rela.<module>.*` only for livepatch modules).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.klp.abi import (
    KSYM_NAME_MAX_OLD,
    is_klp_rela,
    parse_klp_rela,
    parse_klp_symbol,
)
from harness.klp.elfread import (
    SHN_LIVEPATCH,
    ElfImage,
    cstring,
)
from harness.klp.files import printable
from harness.klp.machines import X86_64, machine_of
from harness.klp.symbols import VMLINUX, SymbolTable


@dataclass(frozen=True)
class KlpReloc:
    """Names as in the file (JSON escapes them); messages and the table escape them."""

    section: str  # the .klp.rela section
    section_object: str  # <obj> of the section name ("" when malformed)
    target: str  # the section the relocation writes into (sh_info)
    symbol: str  # full symbol name, e.g. ".klp.sym.vmlinux.kernel_clone,0"
    object: str  # parsed from the symbol name ("" when malformed)
    name: str
    sympos: int
    type: str
    offset: int
    addend: int
    livepatch_symbol: bool  # st_shndx == SHN_LIVEPATCH


@dataclass(frozen=True)
class Verdict:
    object: str
    name: str
    sympos: int
    symbol: str
    status: str  # resolves | ambiguous | not-found | position-too-large | skipped | deferred
    #              | malformed | not-livepatch-symbol | bad-type | unchecked
    address: int | None
    relocations: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status in ("resolves", "deferred", "unchecked")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect_module(path: Path, symtab: SymbolTable | None = None) -> list[KlpReloc]:
    """Every relocation of every klp relocation section, in file order.
    (`symtab` is accepted for symmetry with verdicts(); listing does not need it.)"""
    img = ElfImage.load(Path(path))
    syms = img.symbols()
    strtab = img.strtab()
    out: list[KlpReloc] = []
    for sec in img.rela_sections():
        if not is_klp_rela(img, sec.index):
            continue
        arr = img.relas(sec.index)
        target = img.sections[sec.info].name
        secobj = parse_klp_rela(sec.name) or ""
        fields = (arr.symbols(), arr.types(), arr.offsets(), arr.addends())
        for idx, rtype, off, add in zip(*fields, strict=True):
            full = cstring(strtab, syms.names[idx])
            parsed = parse_klp_symbol(full)
            out.append(
                KlpReloc(
                    sec.name,
                    secobj,
                    target,
                    full,
                    parsed.obj if parsed else "",
                    parsed.name if parsed else full,
                    parsed.sympos if parsed else 0,
                    img.machine.reloc_name(rtype),
                    off,
                    add,
                    syms.shndx[idx] == SHN_LIVEPATCH,
                )
            )
    return out


def is_livepatch_module(path: Path) -> bool:
    return ElfImage.load(Path(path)).is_livepatch()


def verdicts(
    relocs: list[KlpReloc], symtab: SymbolTable | None = None, livepatch: bool = False
) -> list[Verdict]:
    """One verdict per distinct klp symbol (first problem found wins), in first-use order."""
    by_symbol: dict[str, list[KlpReloc]] = {}
    for rel in relocs:
        by_symbol.setdefault(rel.symbol, []).append(rel)
    return [_verdict(rels, symtab, livepatch) for rels in by_symbol.values()]


def _verdict(rels: list[KlpReloc], symtab: SymbolTable | None, livepatch: bool) -> Verdict:
    first = rels[0]
    symbol = printable(first.symbol)

    def v(status: str, message: str, address: int | None = None) -> Verdict:
        return Verdict(
            first.object,
            first.name,
            first.sympos,
            first.symbol,
            status,
            address,
            len(rels),
            message,
        )

    if not all(r.livepatch_symbol for r in rels):
        return v(
            "not-livepatch-symbol",
            f"symbol {symbol} is not marked as a livepatch "
            "symbol (st_shndx != SHN_LIVEPATCH): the load fails",
        )
    if not first.object:
        return v("malformed", f"symbol {symbol} has an incorrectly formatted name")
    machine = machine_of(first.type)  # the type names say which loader applies them
    bad = [r for r in rels if r.type not in machine.accepted_names]
    if bad:
        return v(
            "bad-type",
            f"{bad[0].type} in {printable(bad[0].section)}+{bad[0].offset:#x} " + machine.refused,
        )
    module_secs = sorted({r.section_object for r in rels if r.section_object != VMLINUX})
    if module_secs and not livepatch:
        return v(
            "skipped",
            f"in .klp.rela.{printable(module_secs[0])}.*: an ordinary module's loader skips "
            "module-object klp relocations silently; the fields stay unrelocated",
        )
    note = ""
    if len(first.name) > KSYM_NAME_MAX_OLD:
        note = f" (name longer than {KSYM_NAME_MAX_OLD}: needs v6.1+)"
    if symtab is None:
        return v("unchecked", "no symbol table given" + note)
    if first.object != VMLINUX and not symtab.has_object(first.object):
        return v(
            "deferred",
            f"resolved when module {printable(first.object)} loads (no symbols given for it)"
            + note,
        )
    res = symtab.resolve(first.name, first.sympos, first.object)
    status = res.status
    return v(status, res.message + note, res.address)


def format_table(relocs: list[KlpReloc], verdict_list: list[Verdict] | None) -> str:
    # x86-64's columns as they always were; longer type names (AArch64, PPC64) widen theirs
    tw = max([15] + [len(r.type) for r in relocs if machine_of(r.type) is not X86_64])
    lines = [
        f"{'object':<10} {'symbol':<32} {'pos':>3} {'type':<{tw}} {'section':<28} "
        f"{'offset':>10} {'addend':>6}"
    ]
    for r in relocs:
        obj, name, target = printable(r.object or "?"), printable(r.name), printable(r.target)
        lines.append(
            f"{obj:<10} {name:<32} {r.sympos:>3} {r.type:<{tw}} "
            f"{target:<28} {r.offset:>#10x} {r.addend:>6}"
        )
    if verdict_list is not None:
        lines.append("")
        for v in verdict_list:
            mark = "ok  " if v.ok else "FAIL"
            where = printable(f"{v.object or '?'}:{v.name},{v.sympos}: {v.message}")
            lines.append(f"{mark} {where}")
    return "\n".join(lines)
