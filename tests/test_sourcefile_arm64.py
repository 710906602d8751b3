"""Full paths of STT_FILE blocks on arm64, where ftrace's -fpatchable-function-entry=2 makes gcc
put two NOPs before a function's begin label: a function that starts its own DWARF address
range (one in .init.text, as most files' first function is) has its symbol 8 bytes before the
range. Looking up only the symbol's address left fs/inode.c and fs/hugetlbfs/inode.c (and 658
other blocks of Debian's arm64 6.1 kernel) with their base names, so `init_once@fs/inode.c`
was ambiguous; the function's whole range finds its unit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.kernels.objfiles import AddressUnits
from harness.kernels.sourcefiles import (
    STT_FUNC,
    SourceEntry,
    build_index,
    dwarf_paths,
    symtab_blocks,
)
from harness.klp.symbols import SymbolTable

# From Debian's linux-image-6.1.0-57-arm64-dbg 6.1.192-3 vmlinux: .debug_aranges entries
# (begin, length, compile unit offset) around the first functions of two `inode.c` blocks.
DCACHE, INODE, RAMFS, HUGETLBFS, TASK_MMU, PROC = (
    49607869,  # fs/dcache.c
    49811523,  # fs/inode.c
    60033789,  # fs/ramfs/inode.c
    60136063,  # fs/hugetlbfs/inode.c
    57371875,  # fs/proc/task_mmu.c
    57518632,  # fs/proc/inode.c
)
RANGES = [
    (0xFFFF8000096867A4, 0x98, DCACHE),
    (0xFFFF800009686844, 0xF0, DCACHE),
    (0xFFFF80000968693C, 0x38, INODE),
    (0xFFFF80000968A2B4, 0x24, RAMFS),
    (0xFFFF80000968A2E0, 0x90, HUGETLBFS),
    (0xFFFF80000968A378, 0x12C, HUGETLBFS),
    (0xFFFF800008454C20, 0x3F6C, TASK_MMU),
    (0xFFFF800008458BA0, 0x16DC, PROC),
    (0xFFFF800008458BA0, 0, PROC),  # an empty entry holds nothing
]
# The blocks' first functions (symtab address, size): .init.text ones, and .text's init_once
# of fs/proc/inode.c, which lies at the start of its unit's .text range, NOPs included.
INIT_FS_INODE_SYSCTLS = (0xFFFF800009686934, 64)  # fs/inode.c
INIT_HUGETLBFS_FS = (0xFFFF80000968A370, 308)  # fs/hugetlbfs/inode.c
PROC_INIT_ONCE = (0xFFFF800008458BA0, 40)  # fs/proc/inode.c


def test_function_found_by_its_range_past_the_patchable_nops() -> None:
    units = AddressUnits(RANGES)
    # the symbol's own address is in no range: what the first-byte lookup missed
    assert units.at(INIT_FS_INODE_SYSCTLS[0], 0) is None
    assert units.at(INIT_HUGETLBFS_FS[0], 0) is None
    assert units.at(*INIT_FS_INODE_SYSCTLS) == INODE
    assert units.at(*INIT_HUGETLBFS_FS) == HUGETLBFS  # not fs/ramfs/inode.c just before
    assert units.at(*PROC_INIT_ONCE) == PROC
    # just the 8 NOP bytes: the range starts at the end, no unit holds them
    assert units.at(INIT_FS_INODE_SYSCTLS[0], 8) is None
    assert units.at(0xFFFF800000000000, 16) is None  # before every range
    assert units.at(0xFFFF8000096A0000, 16) is None  # after every range


TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-nm")
# An __init function an initcall points to, as in fs/inode.c: gcc emits it first, in its
# own .init.text range that begins past the NOPs.
SOURCE = """
static int __attribute__((section(".init.text"), noinline)) init_{n}(void) {{ return {n}; }}
static int (*initcall_{n})(void) __attribute__((used)) = init_{n};
static void __attribute__((noinline, used)) init_once(void *p) {{ *(int *)p = {n}; }}
void *ref_{n}(void) {{ return (void *)init_once; }}
"""


@pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason="needs the arm64 gcc")
def test_blocks_of_an_arm64_link_get_their_compile_units(tmp_path: Path) -> None:
    files = ["fs/inode.c", "fs/proc/inode.c", "fs/hugetlbfs/inode.c"]
    for n, rel in enumerate(files):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(SOURCE.format(n=n))
        cmd = [TOOLS[0], "-g", "-O2", "-fpatchable-function-entry=2", "-c", rel, "-o"]
        subprocess.run([*cmd, rel.replace(".c", ".o")], cwd=tmp_path, check=True)
    objs = [f.replace(".c", ".o") for f in files]
    subprocess.run([TOOLS[1], "-e", "0", "-o", "vmlinux", *objs], cwd=tmp_path, check=True)
    vmlinux = tmp_path / "vmlinux"

    blocks = symtab_blocks(vmlinux)
    assert [b.file for b in blocks if b.file] == ["inode.c"] * 3  # base names only
    functions = [[n for n, t, *_ in b.symbols if t == STT_FUNC] for b in blocks if b.file]
    assert [f[0] for f in functions] == ["init_0", "init_1", "init_2"]
    nm = subprocess.run([TOOLS[2], "-n", str(vmlinux)], capture_output=True, text=True)
    lines = [ln for ln in nm.stdout.splitlines() if len(ln.split()) == 3]
    table = SymbolTable.parse("\n".join(lines), "nm")
    entries = build_index(blocks, table, dwarf_paths(blocks, vmlinux))
    assert [e for e in entries if e.name == "init_once"] == [
        SourceEntry(f, "init_once", n) for n, f in enumerate(files, 1)
    ]
