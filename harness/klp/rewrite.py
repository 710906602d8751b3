"""The ELF rewrite behind convert: rename symbols, move relocations, drop annotations.

Relocation sections are cut and joined as byte slices of the input, one slice per run of
moved entries, found by a regular expression over the section's symbol indexes (a section
with nothing to move costs one scan in C); untouched sections are passed to the writer as
views of the input, never decoded.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from harness.errors import UnsupportedElfError
from harness.klp.abi import (
    KLP_RELA_FLAGS,
    check_relocations,
    is_klp_rela,
    klp_rela_name,
    parse_klp_rela,
    parse_klp_symbol,
)
from harness.klp.elfread import (
    SHF_INFO_LINK,
    SHN_LIVEPATCH,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_GROUP,
    SHT_REL,
    SHT_RELA,
    STB_GLOBAL,
    ElfImage,
    cstring,
)
from harness.klp.elfwrite import OutSection, write_elf
from harness.klp.tables import RELA_SIZE, SYM_SIZE, Relas, Symbols, field, store, symbol_class

Chunk = bytes | bytearray | memoryview
_ONES = re.compile("\x01+")


def _moved_runs(
    arr: Relas, wanted: set[int], finder: re.Pattern[str] | None
) -> Iterator[re.Match[str]]:
    """The runs of consecutive entries of `arr` against a symbol in `wanted` (each match's
    span is the entry numbers), found by `finder` (symbol_class) in C."""
    text = arr.symbol_text()
    if finder is None or text is None:  # indexes past U+10FFFF: one byte per entry
        text = bytes(map(wanted.__contains__, arr.symbols())).decode("latin-1")
        finder = _ONES
    return finder.finditer(text)


def _split(raw: bytes, runs: Iterable[re.Match[str]]) -> tuple[bytes, bytes]:
    """(the entries in `runs`, the others): each in file order, one slice per run.
    (Tens of thousands of runs in a large module: the loop is kept to the bone.)"""
    moved: list[bytes] = []
    kept: list[bytes] = []
    keep, move = kept.append, moved.append
    done = 0  # bytes before this offset are placed
    for first, end in map(re.Match.span, runs):
        start = first * RELA_SIZE
        keep(raw[done:start])
        done = end * RELA_SIZE
        move(raw[start:done])
    keep(raw[done:])
    return b"".join(moved), b"".join(kept)


class Rewrite:
    def __init__(self, img: ElfImage, syms: Symbols, dropped: set[int]) -> None:
        self.img, self.syms, self.dropped = img, syms, dropped
        self.tables: dict[int, bytearray] = {}
        self.relas: dict[int, Chunk] = {}  # section index -> replacement entries
        self.new: list[tuple[str, int, Chunk]] = []  # (name, target section, entries)
        self.added: list[bytes] = []  # undefined global symbols appended to .symtab

    def add_undefined(self, name: str) -> None:
        """Append an undefined global symbol `name` (a reference with no relocation: the
        loader resolves every undefined symbol of a module's symtab)."""
        strtab = self._table(self.img.strtab_index)
        offset = len(strtab)
        strtab += name.encode("latin-1") + b"\0"
        self.added.append(struct.pack("<IBBHQQ", offset, STB_GLOBAL << 4, 0, SHN_UNDEF, 0, 0))

    def discard(self, stale: dict[int, set[int]]) -> None:
        """Drop the entries of each relocation section against the given symbols (debug
        info of a consumed annotation array: it refers to nothing that is loaded)."""
        for index, symbols in stale.items():
            arr = self._relas(index)
            _, kept = _split(bytes(arr.raw), _moved_runs(arr, symbols, symbol_class(symbols)))
            self.relas[index] = kept

    def _relas(self, index: int) -> Relas:
        """Section `index`'s entries as this rewrite has them so far."""
        done = self.relas.get(index)
        return self.img.relas(index) if done is None else Relas(bytes(done))

    def append(self, index: int, data: bytes) -> None:
        """Append `data` to section `index` (a __versions entry)."""
        self._table(index).extend(data)

    def _table(self, index: int) -> bytearray:
        if index not in self.tables:
            self.tables[index] = bytearray(self.img.section_bytes(index))
        return self.tables[index]

    def convert(self, targets: dict[int, tuple[str, str]]) -> dict[int, int]:
        """Rename each symbol index to (obj, klp name) and move its relocations.
        Returns {symbol index: relocations moved}."""
        img, syms = self.img, self.syms
        strtab = self._table(img.strtab_index)
        objects = sorted({obj for obj, _ in targets.values()})
        code: dict[int, int] = {}  # symbol index -> its object's position in `objects`
        for idx, (obj, klp) in targets.items():
            syms.set_name(idx, len(strtab))
            syms.set_shndx(idx, SHN_LIVEPATCH)
            strtab += klp.encode("latin-1") + b"\0"
            code[idx] = objects.index(obj)
        wanted = set(code)
        finder = symbol_class(wanted)
        counts: Counter[int] = Counter()
        groups: dict[tuple[int, int], list[Chunk]] = {}
        existing: dict[tuple[str, int], int] = {}
        for sec in img.sections:
            if sec.index in self.dropped or sec.link != img.symtab_index:
                continue
            if sec.type == SHT_REL and sec.size:
                raise UnsupportedElfError(
                    f"{img.path}: {sec.name}: SHT_REL relocations are "
                    f"not used on {img.machine.label} and not supported"
                )
            if sec.type != SHT_RELA:
                continue
            if is_klp_rela(img, sec.index):
                klp_obj = parse_klp_rela(sec.name)
                if klp_obj is not None:
                    existing[(klp_obj, sec.info)] = sec.index
                continue
            arr = self._relas(sec.index)
            runs = _moved_runs(arr, wanted, finder)
            first = next(runs, None)
            if first is None:
                continue  # nothing to move: the section stays a view of the input
            moved_raw, kept = _split(bytes(arr.raw), chain([first], runs))
            moved = Relas(moved_raw)
            check_relocations(img, sec.index, moved, self._name)
            self.relas[sec.index] = kept
            hit = Counter(moved.symbols())
            counts.update(hit)
            by_code = {code[s] for s in hit}
            if len(by_code) == 1:
                groups.setdefault((by_code.pop(), sec.info), []).append(moved.raw)
                continue
            parts: dict[int, list[memoryview]] = {}
            for i, symbol in enumerate(moved.symbols()):
                parts.setdefault(code[symbol], []).append(moved.entries(i, i + 1))
            for c in sorted(parts):
                groups.setdefault((c, sec.info), []).append(b"".join(parts[c]))
        for (c, target), chunks in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            data = b"".join(chunks)
            old = existing.get((objects[c], target))
            if old is not None:
                base = self.relas.get(old)
                self.relas[old] = b"".join([img.relas(old).raw if base is None else base, data])
            else:
                name = klp_rela_name(objects[c], img.sections[target].name)
                self.new.append((name, target, data))
        return {idx: counts[idx] for idx in targets}

    def _name(self, index: int) -> str:
        name = cstring(self._table(self.img.strtab_index), self.syms.names[index])
        parsed = parse_klp_symbol(name)
        return parsed.name if parsed else name

    def write(self, dst: Path, mode: int = 0o644) -> None:
        img = self.img
        shnum = len(img.sections)
        keep = [i for i in range(1, shnum) if i not in self.dropped]
        sec_map = [0] * shnum
        for new, old in enumerate(keep, 1):
            sec_map[old] = new
        symtab_sec = img.sections[img.symtab_index]
        first_global = symtab_sec.info
        symtab: Chunk = self.syms.raw
        sym_map: list[int] | None = None
        if self.dropped:
            symtab, sym_map, first_global = self._drop_symbols(sec_map, first_global)
        if self.added:
            symtab = b"".join([symtab, *self.added])
        shstr = self._table(img.shstrndx)
        out: list[OutSection] = []
        for i in keep:
            sec = img.sections[i]
            data: Chunk = img.section_view(i)
            link = sec_map[sec.link] if sec.link else 0
            info = sec.info
            if sec.type in (SHT_RELA, SHT_REL) or sec.flags & SHF_INFO_LINK:
                info = sec_map[info] if 0 < info < shnum else info
            if i == img.symtab_index:
                data, info = symtab, first_global
            elif i in self.tables:
                data = self.tables[i]
            elif sec.type == SHT_RELA and sec.link == img.symtab_index:
                entries = self.relas.get(i)
                if sym_map is not None:
                    entries = _remap(img.relas(i).raw if entries is None else entries, sym_map)
                if entries is not None:
                    data = entries
            elif sec.type == SHT_GROUP and sym_map is not None:
                data, info = self._group(i, info, sec_map, sym_map)
            out.append(
                OutSection(
                    sec.name_offset,
                    sec.type,
                    sec.flags,
                    0,
                    link,
                    info,
                    sec.addralign,
                    sec.entsize,
                    data,
                    sec.size,
                )
            )
        symtab_new = sec_map[img.symtab_index]
        for name, target, entries in self.new:
            offset = len(shstr)
            shstr += name.encode("latin-1") + b"\0"
            if sym_map is not None:
                entries = _remap(entries, sym_map)
            out.append(
                OutSection(
                    offset, SHT_RELA, KLP_RELA_FLAGS, 0, symtab_new, sec_map[target], 8, 24, entries
                )
            )
        # the name table may have grown after its OutSection was made: rebind it
        new_shstrndx = sec_map[img.shstrndx]
        out[new_shstrndx - 1] = out[new_shstrndx - 1].with_data(shstr)
        write_elf(dst, img.data[:64], out, new_shstrndx, mode)

    def _drop_symbols(self, sec_map: list[int], first_global: int) -> tuple[bytes, list[int], int]:
        """The symbol table without the symbols of dropped sections (section indexes
        renumbered), the old -> new symbol index map, and the new first global index."""
        syms, dropped = self.syms, self.dropped
        gone = [i > 0 and s < SHN_LORESERVE and s in dropped for i, s in enumerate(syms.shndx)]
        sym_map: list[int] = []
        kept = -1
        for is_gone in gone:
            kept += not is_gone
            sym_map.append(kept)  # a gone symbol maps like the kept one before it
        first_global = first_global - sum(gone[:first_global])
        raw = memoryview(syms.raw)
        table = bytearray(
            b"".join(raw[i * SYM_SIZE : (i + 1) * SYM_SIZE] for i, g in enumerate(gone) if not g)
        )
        # ordinary section indexes follow their sections; reserved ones stay
        renumber = list(range(1 << 16))
        renumber[1 : len(sec_map)] = sec_map[1:]
        renumber[SHN_LORESERVE:] = range(SHN_LORESERVE, 1 << 16)
        view = memoryview(table)
        shndx = field(view, "H", 3, 12)
        store(view, "H", 3, 12, array("H", map(renumber.__getitem__, shndx)))
        return bytes(table), sym_map, first_global

    def _group(
        self, index: int, signature: int, sec_map: list[int], sym_map: list[int]
    ) -> tuple[bytes, int]:
        """A section group's content and signature symbol, renumbered: members whose
        section is dropped leave the group."""
        data = self.img.section_view(index)
        words = field(data, "I", 0, 1) if data and not len(data) % 4 else None
        if not words or max(words[1:], default=0) >= len(sec_map) or signature >= len(sym_map):
            raise UnsupportedElfError(f"{self.img.path}: section group {index} is malformed")
        members = (sec_map[m] for m in words[1:])
        out = array("I", [words[0], *(m for m in members if m)])
        view = memoryview(bytearray(len(out) * 4))
        store(view, "I", 0, 1, out)
        return bytes(view), sym_map[signature]


def _remap(entries: Chunk, sym_map: list[int]) -> bytes:
    """`entries` with each ELF64_R_SYM renumbered through `sym_map` (ELF64_R_TYPE kept)."""
    out = bytearray(entries)
    view = memoryview(out)
    symbols = field(view, "I", 3, 6)
    store(view, "I", 3, 6, array("I", map(sym_map.__getitem__, symbols)))
    return bytes(out)
