"""`readelf -a` reads every converted module without a warning: real Debian modules converted
as the world test converts them (vmlinux's exports treated as unexported, so every reference
becomes a klp relocation, plus the livepatch guard), the harness's own sample builds, and the
gcc-compiled objects of the converter tests (annotations consumed, section groups, livepatch).

binutils' readelf checks the symbol table's local/global split among other things
("local symbol N found at index >= .symtab's sh_info value of M"); the control test shows it.
Run it on other kernels with `pytest --kernel SPEC tests/test_readelf.py`.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from elfbuild import KALLSYMS_EXCERPT, compile_module, have_gcc, symbol_table, write_symvers
from elftools.elf.elffile import ELFFile
from oracle.world import module_exports, module_files, read_module

from harness.build.modules import BuiltModule
from harness.kernels.kernel import Kernel
from harness.klp.convert import convert_module
from harness.klp.guard import GUARD_SYMBOL
from harness.klp.symbols import SymbolTable, load_symvers

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils")

DEBIAN_MODULES = ("dummy", "brd", "tcp_vegas", "e1000", "ext4")
SAMPLES = ("kernel_clone", "unexported_data", "sympos_annotation", "livepatch", "address_taken")


def readelf_complaints(path: Path) -> list[str]:
    """What `readelf -a` prints on stderr (warnings and errors), and its failure if any."""
    proc = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    return lines + ([f"readelf exited {proc.returncode}"] if proc.returncode else [])


def _check_symtab(path: Path) -> None:
    """Locals strictly before sh_info, globals from it on (what readelf checks, read with
    pyelftools); the guard, when added, is the last symbol: global and undefined."""
    with open(path, "rb") as handle:
        symtab = symbol_table(ELFFile(handle))
        first_global = symtab["sh_info"]
        binds = [s["st_info"]["bind"] for s in symtab.iter_symbols()]
        assert all(b == "STB_LOCAL" for b in binds[:first_global]), path
        assert all(b != "STB_LOCAL" for b in binds[first_global:]), path
        last = symtab.get_symbol(symtab.num_symbols() - 1)
        if last.name == GUARD_SYMBOL:
            assert last["st_info"]["bind"] == "STB_GLOBAL"
            assert last["st_shndx"] == "SHN_UNDEF"


def test_readelf_warns_about_a_broken_local_global_split(tmp_path: Path) -> None:
    if not have_gcc():
        pytest.skip("needs gcc and ld")
    good = compile_module(tmp_path, "control")
    assert readelf_complaints(good) == []
    data = bytearray(good.read_bytes())
    shoff, shnum = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<H", data, 0x3C)[0]
    for index in range(shnum):
        header = shoff + index * 64
        if struct.unpack_from("<I", data, header + 4)[0] == 2:  # SHT_SYMTAB
            info = struct.unpack_from("<I", data, header + 44)[0]
            struct.pack_into("<I", data, header + 44, info - 1)
    bad = tmp_path / "bad.o"
    bad.write_bytes(bytes(data))
    assert any("found at index >= .symtab's sh_info" in c for c in readelf_complaints(bad))


@pytest.mark.parametrize("variant", [(), ("ANNOTATE",), ("GROUP",), ("LIVEPATCH", "NO_DUP")])
def test_converted_objects_read_cleanly(tmp_path: Path, variant: tuple[str, ...]) -> None:
    if not have_gcc():
        pytest.skip("needs gcc and ld")
    src = compile_module(tmp_path, "m", variant, flags=("-g",))
    out = tmp_path / "m.klp.o"
    symvers = write_symvers(tmp_path)
    report = convert_module(
        src,
        out,
        symtab=SymbolTable.load(KALLSYMS_EXCERPT),
        exports=load_symvers(symvers),
        sympos={"active_show": 2} if "NO_DUP" not in variant else {},
    )
    assert report.converted and report.guard == GUARD_SYMBOL
    assert readelf_complaints(out) == []
    _check_symtab(out)


def test_converted_debian_modules_read_cleanly(klp_kernel: Kernel, tmp_path: Path) -> None:
    files = {p.name.split(".ko")[0]: p for p in module_files(klp_kernel)}
    symtab = SymbolTable.load(klp_kernel.kallsyms)
    exports = module_exports(klp_kernel.symvers)  # vmlinux's exports converted too
    versions = load_symvers(klp_kernel.symvers)
    for name in DEBIAN_MODULES:
        src = tmp_path / f"{name}.ko"
        src.write_bytes(read_module(files[name]))
        assert readelf_complaints(src) == [], name  # the input itself is clean
        out = tmp_path / f"{name}.klp.ko"
        report = convert_module(src, out, symtab=symtab, exports=exports, versions=versions)
        assert report.relocations > 20 and report.guard == GUARD_SYMBOL, name
        assert readelf_complaints(out) == [], name
        _check_symtab(out)


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_builds_read_cleanly(klp_module: Callable[[str], BuiltModule], sample: str) -> None:
    built = klp_module(sample)
    assert readelf_complaints(built.ko) == []
    _check_symtab(built.ko)
