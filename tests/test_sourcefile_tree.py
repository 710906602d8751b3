"""The source-file index of a build tree, end to end with the real tools: gcc compiles three
objects (two with the same base name `x.c`, each with a static `init_once`), ar makes kbuild's
thin vmlinux.a, ld links it; the STT_FILE blocks of the linked symtab get their full paths
from the tree's objects and their positions from the (nm-made) kallsyms order."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.kernels.objfiles import archive_members, linked_objects
from harness.kernels.sourcefiles import (
    SourceEntry,
    build_index,
    index_text,
    parse_index,
    symtab_blocks,
    tree_paths,
)
from harness.klp.symbols import SymbolTable

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "ar", "ld", "nm")), reason="needs gcc and binutils"
)

SOURCES = {
    # same base name, told apart by their other locals
    "fs/x.c": "static int fs_count;\n",
    "drivers/some_long_directory_name/y.c": "static int y_flag;\n",
    "fs/proc/x.c": "static int proc_seen;\n",
}
BODY = """
static void __attribute__((noinline, used)) init_once(void *p) {{ *(int *)p = {n}; }}
void *ref_{n}(void) {{ return (void *)init_once; }}
int get_{n}(void) {{ return {var}; }}
"""


def _tree(tmp: Path) -> Path:
    tree = tmp / "obj"
    order = ["fs/x.o", "drivers/some_long_directory_name/y.o", "fs/proc/x.o"]
    for n, (rel, head) in enumerate(SOURCES.items()):
        src = tree / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        var = head.split()[2].rstrip(";")
        src.write_text(head + BODY.format(n=n, var=var))
        obj = rel.replace(".c", ".o")
        cmd = ["gcc", "-O2", "-fno-pic", "-fno-asynchronous-unwind-tables", "-c", rel, "-o", obj]
        subprocess.run(cmd, cwd=tree, check=True)
    # as kbuild does: thin archives (cDPrST), a directory's built-in.a nested and flattened
    subprocess.run(["ar", "cDPrST", "fs/proc/built-in.a", order[2]], cwd=tree, check=True)
    subprocess.run(
        ["ar", "cDPrST", "vmlinux.a", *order[:2], "fs/proc/built-in.a"], cwd=tree, check=True
    )
    link = ["ld", "-o", "vmlinux", "-e", "0", "--whole-archive", "vmlinux.a"]
    subprocess.run(link, cwd=tree, check=True)
    return tree


def _kallsyms(vmlinux: Path) -> SymbolTable:
    nm = subprocess.run(["nm", "-n", str(vmlinux)], capture_output=True, text=True, check=True)
    lines = [ln for ln in nm.stdout.splitlines() if len(ln.split()) == 3]
    return SymbolTable.parse("\n".join(lines), "nm")


def test_thin_archive_members_in_link_order(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert archive_members(tree / "vmlinux.a") == [
        "fs/x.o",
        "drivers/some_long_directory_name/y.o",
        "fs/proc/x.o",
    ]
    assert linked_objects(tree)[0] == "fs/x.o"


def test_index_of_a_linked_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    blocks = symtab_blocks(tree / "vmlinux")
    assert [b.file for b in blocks if b.file] == ["x.c", "y.c", "x.c"]  # base names only
    entries = build_index(blocks, _kallsyms(tree / "vmlinux"), tree_paths(blocks, tree))
    assert [e for e in entries if e.name == "init_once"] == [
        SourceEntry("fs/x.c", "init_once", 1),
        SourceEntry("drivers/some_long_directory_name/y.c", "init_once", 2),
        SourceEntry("fs/proc/x.c", "init_once", 3),
    ]
    assert parse_index(index_text(entries), "i") == entries


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_only_vmlinux_is_taken_out_of_a_dbg_package(tmp_path: Path) -> None:
    from harness.errors import KernelError
    from harness.kernels.debugpkg import extract_vmlinux

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: linux-image-1.2.3-amd64-dbg\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@t>\nDescription: t\n"
    )
    modules = root / "usr/lib/debug/lib/modules/1.2.3-amd64/kernel"
    modules.mkdir(parents=True)
    (modules / "ext4.ko").write_bytes(b"module")
    boot = root / "usr/lib/debug/boot"
    boot.mkdir(parents=True)
    (boot / "vmlinux-1.2.3-amd64").write_bytes(b"\x7fELF linked" * 1000)
    deb = tmp_path / "dbg.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "-b", str(root), str(deb)], check=True, capture_output=True)
    out = tmp_path / "vmlinux"
    extract_vmlinux(deb, out, "1.2.3-amd64")
    assert out.read_bytes() == b"\x7fELF linked" * 1000
    with pytest.raises(KernelError, match="holds no vmlinux"):
        extract_vmlinux(deb, tmp_path / "other", "9.9.9-amd64")
