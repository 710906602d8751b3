"""The converter on a real module: kernel_clone built against the Debian 6.1 headers package.

No VM here: this checks the ELF the build stage hands to the boot stage, field by field with
pyelftools and against readelf, and the offline verdict against the kernel's own symbol table.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

from elfbuild import symbol_table
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from harness.build.modules import BuiltModule
from harness.kernels.kernel import Kernel
from harness.klp.inspect import inspect_module, verdicts
from harness.klp.symbols import SymbolTable

SHN_LIVEPATCH = 0xFF20
SHF_RELA_LIVEPATCH = 0x00100000


def _relocations(path: str) -> dict[str, list[tuple[int, int, str]]]:
    """Per relocation section: (offset, type, symbol name)."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        symtab = symbol_table(elf)
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection):
                out[section.name] = [
                    (r["r_offset"], r["r_info_type"], symtab.get_symbol(r["r_info_sym"]).name)
                    for r in section.iter_relocations()
                ]
    return out


def test_kernel_clone_module_converts(
    klp_kernel: Kernel, klp_module: Callable[[str], BuiltModule]
) -> None:
    built = klp_module("kernel_clone")
    assert set(built.converted) == {"vmlinux.kernel_clone,0", "vmlinux.do_exit,0"}
    before, after = _relocations(str(built.raw_ko)), _relocations(str(built.ko))
    assert sum(map(len, before.values())) == sum(map(len, after.values()))

    klp = {n: r for n, r in after.items() if n.startswith(".klp.rela.vmlinux.")}
    assert set(klp) >= {".klp.rela.vmlinux..text", ".klp.rela.vmlinux..init.text"}
    moved = sorted(
        (n.removeprefix(".klp.rela.vmlinux."), o, t) for n, rs in klp.items() for o, t, _ in rs
    )
    original = sorted(
        (n.removeprefix(".rela"), o, t)
        for n, rs in before.items()
        for o, t, s in rs
        if s in ("kernel_clone", "do_exit")
    )
    assert moved == original  # every field moved once, with its type and offset

    with open(built.ko, "rb") as handle:
        elf = ELFFile(handle)
        symtab = symbol_table(elf)
        for name in klp:
            section = elf.get_section_by_name(name)
            assert isinstance(section, RelocationSection), name
            assert section["sh_flags"] & SHF_RELA_LIVEPATCH
            assert elf.get_section(section["sh_info"]).name == name.removeprefix(
                ".klp.rela.vmlinux."
            )
            for rel in section.iter_relocations():
                sym = symtab.get_symbol(rel["r_info_sym"])
                assert sym["st_shndx"] == SHN_LIVEPATCH and sym.name.startswith(".klp.sym.vmlinux.")
        for name, rels in after.items():
            if not name.startswith(".klp.rela."):
                assert not any(s.startswith(".klp.sym.") for _, _, s in rels), name

    readelf = subprocess.run(
        ["readelf", "-rsSW", str(built.ko)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"\.klp\.rela\.vmlinux\.\.text\s+RELA\s+.*\sAIo\s", readelf)
    assert re.search(
        r"NOTYPE\s+GLOBAL DEFAULT\s+OS \[0xff20\] \.klp\.sym\.vmlinux\.kernel_clone,0", readelf
    )

    table = SymbolTable.load(klp_kernel.kallsyms)
    judged = {v.name: v for v in verdicts(inspect_module(built.ko, table), table)}
    for name in ("kernel_clone", "do_exit"):
        (expected,) = table.candidates(name)
        assert judged[name].status == "resolves"
        assert judged[name].address == expected.address


def test_exported_symbols_are_left_alone(klp_module: Callable[[str], BuiltModule]) -> None:
    built = klp_module("kernel_clone")
    assert "_printk" in built.left_alone and "kthread_stop" in built.left_alone


def test_warm_build_is_cached(klp_module: Callable[[str], BuiltModule]) -> None:
    klp_module("kernel_clone")
    assert klp_module("kernel_clone").cached
