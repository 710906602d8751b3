"""The ELF rewrite behind convert: rename symbols, move relocations, drop annotations.

All table work is done on numpy arrays; untouched sections are passed to the
writer as views of the input, never decoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    SHT_GROUP,
    SHT_REL,
    SHT_RELA,
    ElfImage,
    cstring,
    rela_symbols,
    rela_types,
)
from harness.klp.elfwrite import OutSection, write_elf


class Rewrite:
    def __init__(self, img: ElfImage, syms: Any, dropped: set[int]) -> None:
        self.img, self.syms, self.dropped = img, syms, dropped
        self.tables: dict[int, bytearray] = {}
        self.relas: dict[int, Any] = {}  # section index -> replacement rela array
        self.new: list[tuple[str, int, Any]] = []  # (name, target section, relas)

    def _table(self, index: int) -> bytearray:
        if index not in self.tables:
            self.tables[index] = bytearray(self.img.section_bytes(index))
        return self.tables[index]

    def convert(self, targets: dict[int, tuple[str, str]]) -> dict[int, int]:
        """Rename each symbol index to (obj, klp name) and move its relocations.
        Returns {symbol index: relocations moved}."""
        import numpy as np

        img, syms = self.img, self.syms
        nsyms = len(syms)
        strtab = self._table(img.strtab_index)
        objects = sorted({obj for obj, _ in targets.values()})
        code = np.full(nsyms, -1, dtype=np.int32)
        for idx, (obj, klp) in targets.items():
            syms["name"][idx] = len(strtab)
            syms["shndx"][idx] = SHN_LIVEPATCH
            strtab += klp.encode("latin-1") + b"\0"
            code[idx] = objects.index(obj)
        counts = np.zeros(nsyms, dtype=np.int64)
        groups: dict[tuple[int, int], list[Any]] = {}
        existing: dict[tuple[str, int], int] = {}
        for sec in img.sections:
            if sec.index in self.dropped or sec.link != img.symtab_index:
                continue
            if sec.type == SHT_REL and sec.size:
                raise UnsupportedElfError(
                    f"{img.path}: {sec.name}: SHT_REL relocations are "
                    "not used on x86-64 and not supported"
                )
            if sec.type != SHT_RELA:
                continue
            if is_klp_rela(img, sec.index):
                klp_obj = parse_klp_rela(sec.name)
                if klp_obj is not None:
                    existing[(klp_obj, sec.info)] = sec.index
                continue
            arr = img.relas(sec.index)
            symi = rela_symbols(arr).astype(np.int64)
            mask = code[symi] >= 0
            if not mask.any():
                continue
            moved = arr[mask]
            check_relocations(img, sec.index, moved, self._name)
            self.relas[sec.index] = arr[~mask]
            counts += np.bincount(symi[mask], minlength=nsyms)
            mcodes = code[symi[mask]]
            # np.unique would import numpy.ma (15 ms of a CLI run)
            for c in np.flatnonzero(np.bincount(mcodes)).tolist():
                groups.setdefault((c, sec.info), []).append(moved[mcodes == c])
        for (c, target), parts in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            data = np.concatenate(parts)
            old = existing.get((objects[c], target))
            if old is not None:
                base = self.relas.get(old)
                self.relas[old] = np.concatenate([img.relas(old) if base is None else base, data])
            else:
                name = klp_rela_name(objects[c], img.sections[target].name)
                self.new.append((name, target, data))
        return {idx: int(counts[idx]) for idx in targets}

    def _name(self, index: int) -> str:
        name = cstring(bytes(self._table(self.img.strtab_index)), int(self.syms["name"][index]))
        parsed = parse_klp_symbol(name)
        return parsed.name if parsed else name

    def write(self, dst: Path, mode: int = 0o644) -> None:
        import numpy as np

        img = self.img
        shnum = len(img.sections)
        keep = [i for i in range(1, shnum) if i not in self.dropped]
        sec_map = np.zeros(shnum, dtype=np.int64)
        sec_map[keep] = np.arange(1, len(keep) + 1)
        syms = self.syms
        symtab_sec = img.sections[img.symtab_index]
        first_global = symtab_sec.info
        sym_map = None
        if self.dropped:
            shndx = syms["shndx"].astype(np.int64)
            ordinary = (shndx > 0) & (shndx < SHN_LORESERVE)
            gone = ordinary & np.isin(shndx, list(self.dropped))
            gone[0] = False
            sym_map = np.cumsum(~gone) - 1
            first_global = int((~gone[:first_global]).sum())
            syms = syms[~gone]
            sel = (syms["shndx"] > 0) & (syms["shndx"] < SHN_LORESERVE)
            syms["shndx"][sel] = sec_map[syms["shndx"][sel].astype(np.int64)]
        shstr = self._table(img.shstrndx)
        out: list[OutSection] = []
        for i in keep:
            sec = img.sections[i]
            data: Any = img.section_view(i)
            link = int(sec_map[sec.link]) if sec.link else 0
            info = sec.info
            if sec.type in (SHT_RELA, SHT_REL) or sec.flags & SHF_INFO_LINK:
                info = int(sec_map[info]) if 0 < info < shnum else info
            if i == img.symtab_index:
                data, info = syms.tobytes(), first_global
            elif i in self.tables:
                data = self.tables[i]
            elif sec.type == SHT_RELA and sec.link == img.symtab_index:
                arr = self.relas.get(i)
                if sym_map is not None:
                    arr = _remap(img.relas(i) if arr is None else arr, sym_map)
                if arr is not None:
                    data = arr.tobytes()
            elif sec.type == SHT_GROUP and sym_map is not None:
                data, info = self._group(i, sec_map), int(sym_map[info])
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
        symtab_new = int(sec_map[img.symtab_index])
        for name, target, arr in self.new:
            offset = len(shstr)
            shstr += name.encode("latin-1") + b"\0"
            if sym_map is not None:
                arr = _remap(arr, sym_map)
            out.append(
                OutSection(
                    offset,
                    SHT_RELA,
                    KLP_RELA_FLAGS,
                    0,
                    symtab_new,
                    int(sec_map[target]),
                    8,
                    24,
                    arr.tobytes(),
                )
            )
        # the name table may have grown after its OutSection was made: rebind it
        new_shstrndx = int(sec_map[img.shstrndx])
        out[new_shstrndx - 1] = out[new_shstrndx - 1].with_data(shstr)
        write_elf(dst, img.data[:64], out, new_shstrndx, mode)

    def _group(self, index: int, sec_map: Any) -> bytes:
        import numpy as np

        words = np.frombuffer(self.img.section_bytes(index), dtype="<u4").copy()
        members = words[1:].astype(np.int64)
        if len(members) and int(members.max()) >= len(sec_map):
            raise UnsupportedElfError(f"{self.img.path}: section group {index} is malformed")
        words[1:] = sec_map[members]
        return bytes(words[np.concatenate([[True], words[1:] != 0])].tobytes())


def _remap(arr: Any, sym_map: Any) -> Any:
    import numpy as np

    symi = rela_symbols(arr).astype(np.int64)
    arr = arr.copy()
    arr["info"] = (sym_map[symi].astype(np.uint64) << np.uint64(32)) | rela_types(arr)
    return arr
