"""Shared by the per-machine converter tests: real modules with one relocation retyped, and
the CLI's one-line refusal of a type the machine's loader does not apply."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from harness.errors import RelocationTypeError
from harness.klp.convert import undefined_symbols


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
