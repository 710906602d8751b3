"""What the in-memory check of a loaded module keeps (part of the step's transcript): the
converted .ko's klp relocations and kernel-patched sites (harness.suite.memcheck.module_relocs),
the bytes the guest held at each field and the conversion's intent, as JSON. Fields a machine
added (AArch64's .plt, PPC64's .stubs) are written only for that machine, and read with
defaults, so records written before them still load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.klp.machines import PPC64, X86_64
from harness.suite import fields, fields_aarch64, fields_x86_64
from harness.suite.jsonfields import json_int, json_str


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
    def width(self) -> int:  # x86-64 (0-42) or AArch64 (256-); PPC64 numbers overlap x86-64's:
        # per machine, fields.width (what `reads` uses)
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
    stubs_size: int = 0  # ppc64: the bytes of .stubs the loader allocates (0: none to read)
    toc: bool = False  # ppc64: the module has a .toc (its TOC pointer is .toc's, else .stubs')


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
    stubs: str = ""  # hex: ppc64, the bytes read at the module's .stubs (base in `bases`)

    def to_json(self) -> dict[str, Any]:
        # the fields AArch64 and PPC64 added only when set: x86-64 records stay as they were
        extra = {"machine": self.machine, "plt": self.plt} if self.machine != X86_64.label else {}
        if self.machine == PPC64.label:
            extra["stubs"] = self.stubs
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
            stubs=bytes.fromhex(json_str(data.get("stubs", ""))).hex(),
        )


def _reloc_tuple(r: KlpReloc) -> tuple[str, str, int, int, int, str, str, int]:
    return (r.rela, r.section, r.offset, r.type, r.addend, r.obj, r.name, r.sympos)


def _reloc(item: Any) -> KlpReloc:
    rela, section, offset, rtype, addend, obj, name, sympos = item
    return KlpReloc(
        json_str(rela), json_str(section), json_int(offset), json_int(rtype), json_int(addend),
        json_str(obj), json_str(name), json_int(sympos),
    )  # fmt: skip
