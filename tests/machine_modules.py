"""Shared by the per-machine converter tests (AArch64, PPC64) on real modules: a made-up
vmlinux table for a module, its conversion, its RELA entries before and after, a copy with
one relocation retyped, and the CLI's one-line refusal of a type the loader does not apply."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.errors import RelocationTypeError
from harness.klp.convert import convert_module, undefined_symbols
from harness.klp.symbols import SymbolTable

SHF_RELA_LIVEPATCH = 0x00100000
# Entry tuples: (target section, offset, type, addend, symbol name)
Entry = tuple[str, int, int, int, str]


def symbol_map(ko: Path, base: int, skip: str = "") -> SymbolTable:
    """A vmlinux table holding each undefined symbol of `ko` (but `skip`) at made-up
    addresses from `base`."""
    names = [n for n in undefined_symbols(ko) if n != skip]
    text = "".join(f"{base + i * 0x40:016x} T {n}\n" for i, n in enumerate(names))
    return SymbolTable.parse(text, "made-up System.map")


def convert(src: Path, dst: Path, base: int) -> None:
    convert_module(src, dst, symtab=symbol_map(src, base), exports=set(), guard=False)


def entries(path: Path, machine: str) -> tuple[Counter[Entry], Counter[Entry], dict[str, int]]:
    """(entries of ordinary RELA sections against undefined symbols, entries of klp RELA
    sections with the klp prefix taken off the symbol, the klp symbols' st_shndx) of a
    little-endian module of `machine` ("EM_AARCH64")."""
    plain: Counter[Entry] = Counter()
    klp: Counter[Entry] = Counter()
    shndx: dict[str, int] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == machine and elf.little_endian
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or not sec.is_RELA():
                continue
            syms = elf.get_section(sec["sh_link"])
            assert isinstance(syms, SymbolTableSection)
            target = elf.get_section(sec["sh_info"]).name
            is_klp = sec.name.startswith(".klp.rela.vmlinux.")
            assert is_klp == bool(sec["sh_flags"] & SHF_RELA_LIVEPATCH), sec.name
            if is_klp:
                assert sec.name == f".klp.rela.vmlinux.{target}"
            for rel in sec.iter_relocations():
                sym = syms.get_symbol(rel["r_info_sym"])
                entry = (target, rel["r_offset"], rel["r_info_type"], rel["r_addend"], sym.name)
                if is_klp:
                    m = re.fullmatch(r"\.klp\.sym\.vmlinux\.(.+),0", sym.name)
                    assert m, sym.name
                    klp[(*entry[:4], m.group(1))] += 1
                    shndx[sym.name] = sym["st_shndx"]
                elif sym["st_shndx"] == "SHN_UNDEF" and sym.name:
                    plain[entry] += 1
    return plain, klp, shndx


def readelf(path: Path) -> str:
    """GNU readelf's view of the relocations, symbols and sections: it must read all of it."""
    proc = subprocess.run(
        ["readelf", "-W", "-r", "-s", "-S", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    return proc.stdout


def retyped(
    src: Path, dst: Path, old_type: int, new_type: int, skip: Callable[[str], bool] | None = None
) -> int:
    """Copy `src` with its first `old_type` entry against an undefined symbol (not one that
    `skip` names) given `new_type`; returns that entry's offset."""
    data = bytearray(src.read_bytes())
    with src.open("rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or not sec.is_RELA():
                continue
            syms = elf.get_section(sec["sh_link"])
            assert isinstance(syms, SymbolTableSection)
            for i, rel in enumerate(sec.iter_relocations()):
                sym = syms.get_symbol(rel["r_info_sym"])
                if rel["r_info_type"] != old_type or sym["st_shndx"] != "SHN_UNDEF":
                    continue
                if skip is not None and skip(sym.name):
                    continue
                at = sec["sh_offset"] + i * 24 + 8
                struct.pack_into("<Q", data, at, (rel["r_info_sym"] << 32) | new_type)
                dst.write_bytes(data)
                return int(rel["r_offset"])
    raise AssertionError(f"no type {old_type} entry against an undefined symbol")


def cli_refusal(src: Path, work: Path, base: int) -> str:
    """`klp-harness convert` of `src` (every undefined symbol in a System.map from `base`):
    its one stderr line, checked to carry the exit status of a refused relocation type."""
    smap = work / "System.map"
    names = undefined_symbols(src)
    smap.write_text("".join(f"{base + i:016x} T {n}\n" for i, n in enumerate(names)))
    symvers = work / "Module.symvers"
    symvers.write_text("0x12345678\tsome_export\tvmlinux\tEXPORT_SYMBOL\t\n")
    cli = [sys.executable, "-m", "harness.cli.main", "convert", str(src), "-o", str(work / "o")]
    cli += ["--system-map", str(smap), "--symvers", str(symvers), "--no-livepatch-guard"]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == RelocationTypeError.exit_code, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("klp-harness: ")
    return line
