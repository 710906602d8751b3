"""Positions chosen by source file (`--sympos NAME@FILE`, KLP_SYMPOS_FILE): resolution on real
indexes (tests/data/sourcefile: excerpts of the indexes made from the linked vmlinux of each
kernel), the refusals, and the converter consuming KLP_SYMPOS_FILE in a gcc-built module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from elfbuild import compile_module, have_gcc, symbol_table, write_symvers
from elftools.elf.elffile import ELFFile

from harness.cli.options import parse_sympos
from harness.errors import SourceFileChoiceError, UsageError
from harness.kernels.sourcefiles import lookup_table, parse_index
from harness.klp.convert import convert_module
from harness.klp.sourcefile import SourceLookup, resolve_file
from harness.klp.symbols import SymbolTable

DATA = Path(__file__).parent / "data" / "sourcefile"
DEBIAN_61 = DATA / "debian-6.1.0-57-amd64_6.1.192-3.tsv"
DEBIAN_510 = DATA / "debian-5.10.0-46-amd64_5.10.262-1.tsv"
DEBIAN_612 = DATA / "debian-6.12.118+deb13-amd64_6.12.118-1.tsv"
SOURCE_61 = DATA / "source-6.1-livepatch.tsv"
DEBIAN_73 = DATA / "debian-7.3.4+deb13-amd64_7.3.4-1~bpo13+1.tsv"

# Debian 6.1.0-57's seven init_once, as its recovered kallsyms lists them (address order).
KALLSYMS_61 = (
    "".join(
        f"{a} t init_once\n"
        for a in (
            "ffffffff8138b140",
            "ffffffff81405090",
            "ffffffff81420db0",
            "ffffffff81436920",
            "ffffffff814d1560",
            "ffffffff8172c770",
            "ffffffff817afc20",
        )
    )
    + "ffffffff81000000 T _text\n"
)


def lookup(path: Path) -> SourceLookup:
    table = lookup_table(parse_index(path.read_text(), str(path)))
    return lambda name: table.get(name, {})


@pytest.mark.parametrize(
    ("index", "file", "position"),
    [
        (DEBIAN_61, "fs/proc/inode.c", 2),
        (DEBIAN_510, "fs/proc/inode.c", 3),  # fs/block_dev.c comes first on 5.10
        (DEBIAN_612, "fs/proc/inode.c", 2),
        (SOURCE_61, "fs/proc/inode.c", 2),
        (DEBIAN_73, "fs/proc/inode.c", 3),  # fs/aio.c comes first on 7.x
        (DEBIAN_61, "net/socket.c", 7),
        (DEBIAN_510, "net/socket.c", 7),
        (DEBIAN_612, "net/socket.c", 8),
        (SOURCE_61, "net/socket.c", 4),
        (DEBIAN_73, "net/socket.c", 10),
        (DEBIAN_61, "proc/inode.c", 2),  # a path suffix at a directory boundary
    ],
)
def test_one_file_one_position_per_kernel(index: Path, file: str, position: int) -> None:
    assert resolve_file("t", "init_once", file, lookup(index), 7) == position


def test_file_not_found_lists_the_candidates() -> None:
    with pytest.raises(SourceFileChoiceError) as err:
        resolve_file("mod.ko", "init_once", "fs/nosuch.c", lookup(DEBIAN_61), 7)
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 17
    assert msg.startswith(
        "mod.ko: no 'init_once' from fs/nosuch.c in vmlinux (files and positions:"
    )
    assert "fs/inode.c: 1; fs/proc/inode.c: 2;" in msg and "net/socket.c: 7)" in msg


def test_a_suffix_that_is_no_path_boundary_is_not_a_match() -> None:
    with pytest.raises(SourceFileChoiceError, match=r"no 'init_once' from oc/inode\.c"):
        resolve_file("t", "init_once", "oc/inode.c", lookup(DEBIAN_61), 7)


def test_two_in_one_file_is_refused_with_the_candidates() -> None:
    # "inode.c" names four files (fs/, fs/proc/, fs/hugetlbfs/ ...): several symbols match
    with pytest.raises(SourceFileChoiceError) as err:
        resolve_file("t", "init_once", "inode.c", lookup(DEBIAN_61), 7)
    assert "inode.c matches 3 symbols 'init_once' in vmlinux" in str(err.value)
    assert "choose one with --sympos init_once=N" in str(err.value)
    # a file whose block holds two symbols of the name (the index lists it twice)
    twice: SourceLookup = lambda name: {"lib/x.c": (1, 3), "lib/y.c": (2,)}  # noqa: E731
    with pytest.raises(SourceFileChoiceError, match=r"lib/x.c matches 2 symbols 'f'.*lib/x.c: 1,3"):
        resolve_file("t", "f", "lib/x.c", twice, 3)


def test_a_base_name_only_entry_matches_its_path() -> None:
    # data-only blocks have no function address to find their compile unit: base name kept
    assert (
        resolve_file("t", "CSWTCH.2", "drivers/acpi/acpica/nspredef.c", lookup(DEBIAN_61), 2) == 2
    )


def test_a_unique_name_needs_no_index() -> None:
    assert resolve_file("t", "kernel_clone", "kernel/fork.c", lookup(DEBIAN_61), 1) == 0


def test_parse_sympos_forms() -> None:
    files: dict[str, str] = {}
    assert parse_sympos(["a=2", "init_once@fs/inode.c", "b@c=d.c"], files) == {"a": 2}
    assert files == {"init_once": "fs/inode.c", "b": "c=d.c"}
    with pytest.raises(UsageError, match="a source file is not taken here"):
        parse_sympos(["init_once@fs/inode.c"])  # `klp-harness make`: numbers only
    with pytest.raises(UsageError, match="expected NAME=N"):
        parse_sympos(["init_once@"], {})


# -- the converter with a gcc-built module --------------------------------------------------

ANNOTATED_C = r"""
#include "klp_convert.h"
extern void init_once(void *foo);
extern int active_show(int);
KLP_MODULE_RELOC_FILE(vmlinux) my_files[] = {
    KLP_SYMPOS_FILE(init_once, "fs/proc/inode.c"),
};
void *kept = (void *)init_once;
int use(int x) { return active_show(x); }
"""


def _klp_names(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        names = [s.name for s in symbol_table(elf).iter_symbols() if s.name.startswith(".klp.")]
        sections = [s.name for s in elf.iter_sections()]
    assert not [s for s in sections if "module_reloc_files" in s], sections
    return sorted(names)


pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc")


@pytest.mark.parametrize("flags", [(), ("-g",)])
def test_annotation_chooses_by_file(tmp_path: Path, flags: tuple[str, ...]) -> None:
    obj = compile_module(tmp_path, source=ANNOTATED_C, flags=flags)
    table = SymbolTable.parse(KALLSYMS_61 + "ffffffff81111111 t active_show\n", "kallsyms")
    out = tmp_path / "out.ko"
    report = convert_module(
        obj,
        out,
        symtab=table,
        exports=set(),
        sympos={"active_show": 0},
        sources=lookup(DEBIAN_61),
        guard=False,
    )
    assert _klp_names(out) == [
        ".klp.sym.vmlinux.active_show,0",
        ".klp.sym.vmlinux.init_once,2",
    ]
    assert "'init_once' from fs/proc/inode.c is position 2" in report.notes
    # readelf reads the result without a word (debug info relocations to the array dropped)
    proc = subprocess.run(["readelf", "-a", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Warning" not in proc.stderr


def test_command_line_file_wins_and_both_forms_for_one_name_are_refused(tmp_path: Path) -> None:
    obj = compile_module(tmp_path, source=ANNOTATED_C)
    table = SymbolTable.parse(KALLSYMS_61 + "ffffffff81111111 t active_show\n", "kallsyms")
    common = dict(symtab=table, exports=set(), sources=lookup(DEBIAN_61), guard=False)
    convert_module(
        obj,
        tmp_path / "a.ko",
        sympos_files={"init_once": "net/socket.c"},
        **common,  # type: ignore[arg-type]
    )
    assert ".klp.sym.vmlinux.init_once,7" in _klp_names(tmp_path / "a.ko")
    with pytest.raises(SourceFileChoiceError, match=r"both a position \(2\) and a source"):
        convert_module(obj, tmp_path / "b.ko", sympos={"init_once": 2}, **common)  # type: ignore[arg-type]
    assert not (tmp_path / "b.ko").exists()


def test_cli_without_a_kernel_refuses_a_file_choice(tmp_path: Path) -> None:
    source = "extern void init_once(void *);\nvoid *kept = (void *)init_once;\n"
    obj = compile_module(tmp_path, source=source)
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(KALLSYMS_61)
    symvers = write_symvers(tmp_path)
    argv = [
        sys.executable,
        "-m",
        "harness.cli.main",
        "convert",
        str(obj),
        "-o",
        str(tmp_path / "o"),
    ]
    argv += ["--system-map", str(kallsyms), "--symvers", str(symvers), "--no-livepatch-guard"]
    proc = subprocess.run(
        [*argv, "--sympos", "init_once@fs/proc/inode.c"], capture_output=True, text=True
    )
    assert proc.returncode == 17, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "needs the target's linked vmlinux: give --kernel SPEC" in proc.stderr
    assert not (tmp_path / "o").exists()
