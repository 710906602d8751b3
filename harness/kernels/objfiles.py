"""What a kernel build tree and a debug vmlinux say about object files: the objects linked
into vmlinux (in link order), an object's local symbols, and the DWARF compile unit at an
address. Used by harness.kernels.sourcefiles to name the full path of an STT_FILE block."""

from __future__ import annotations

import bisect
import functools
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.errors import KernelError

_SYM = struct.Struct("<IBBHQQ")
ARCHIVES = ("vmlinux.a", "built-in.a", "lib/lib.a", "arch/x86/lib/lib.a")


def archive_members(path: Path) -> list[str]:
    """Member names of an ar archive, thin (kbuild's vmlinux.a and built-in.a) or not, in
    archive order; a thin archive's names are relative to the archive's directory."""
    data = path.read_bytes()
    thin = data.startswith(b"!<thin>\n")
    if not thin and not data.startswith(b"!<arch>\n"):
        raise KernelError(f"{path}: not an ar archive")
    names: list[str] = []
    long_names = b""
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        raw = header[:16].decode("latin-1").rstrip()
        size = int(header[48:58].decode("ascii").strip() or 0)
        body = pos + 60
        if raw == "//":
            long_names = data[body : body + size]
        elif raw not in ("/", "/SYM64/"):
            ref = raw.rstrip("/").rstrip()  # GNU ar may end a "/offset" field with "/"
            if ref.startswith("/") and ref[1:].isdigit():
                off = int(ref[1:])
                end = long_names.find(b"/\n", off)
                raw = long_names[off:end].decode("latin-1")
            names.append(raw.rstrip("/"))
        # a thin archive stores no member data; special members hold their tables
        stored = size if (not thin or raw in ("//", "/", "/SYM64/")) else 0
        pos = body + stored + (stored & 1)
    return names


def linked_objects(tree: Path) -> list[str]:
    """Objects of the tree's link, relative to the tree, in archive order (nested thin
    archives expanded); objects not linked (modules) are never listed."""
    out: list[str] = []

    def walk(archive: Path) -> None:
        for member in archive_members(archive):
            path = (archive.parent / member).resolve()
            if member.endswith(".a"):
                walk(path)
            elif path.is_relative_to(tree.resolve()):
                out.append(str(path.relative_to(tree.resolve())))

    top = [tree / a for a in ARCHIVES if (tree / a).is_file()]
    if not top:
        raise KernelError(f"{tree}: no vmlinux.a or built-in.a: not a built kernel tree")
    for archive in top[:1] + [a for a in top[1:] if a.parent != tree]:
        walk(archive)
    return list(dict.fromkeys(out))


# A clang LTO build's objects are LLVM bitcode (raw, or in the wrapper), not ELF.
BITCODE_MAGIC = (b"BC\xc0\xde", b"\xde\xc0\x17\x0b")


def _llvm_nm() -> str | None:
    """The newest llvm-nm on PATH (any of them reads the bitcode of an older clang)."""
    versioned = sorted(
        (int(p.name.rsplit("-", 1)[1]), p.name)
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).is_dir()
        for p in Path(d).glob("llvm-nm-[0-9]*")
        if p.name.rsplit("-", 1)[1].isdigit()
    )
    return shutil.which(versioned[-1][1]) if versioned else shutil.which("llvm-nm")


def _bitcode_locals(path: Path) -> frozenset[str]:
    """Local functions and objects of an LLVM bitcode object, through llvm-nm (lowercase
    t/d/b/r are the locals, as in nm)."""
    tool = _llvm_nm()
    if tool is None:
        raise KernelError(f"{path}: LLVM bitcode (a clang LTO build): reading it needs llvm-nm")
    proc = subprocess.run(
        [tool, "--defined-only", "--format=posix", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise KernelError(f"{tool} {path}: {proc.stderr.strip()[-200:]}")
    fields = (line.split() for line in proc.stdout.splitlines())
    return frozenset(f[0] for f in fields if len(f) >= 2 and f[1] in ("t", "d", "b", "r"))


@functools.lru_cache(maxsize=256)
def object_locals(path: Path) -> frozenset[str]:
    """Names of the local functions and objects of a relocatable object (ELF or bitcode)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as handle:
            if handle.read(4) in BITCODE_MAGIC:
                return _bitcode_locals(path)
    except OSError:
        return frozenset()
    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                return frozenset()
            data, strtab = symtab.data(), elf.get_section(symtab["sh_link"]).data()
    except (ELFError, OSError):
        return frozenset()  # not an object this tree can tell anything from
    names = set()
    for name_off, info, _o, _s, _v, _z in _SYM.iter_unpack(data):
        if info >> 4 == 0 and info & 0xF in (1, 2):
            names.add(strtab[name_off : strtab.find(b"\0", name_off)].decode("latin-1"))
    return frozenset(names)


class AddressUnits:
    """The address ranges of .debug_aranges, sorted: which compile unit holds some byte of a
    function. A function's range is looked up, not just its first byte: an arm64 kernel built
    with -fpatchable-function-entry=2 (ftrace) has gcc put the two NOPs before the function's
    begin label, so its symbol lies 8 bytes before the unit's range when the function starts
    its own range (another section than .text, e.g. .init.text)."""

    def __init__(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        # (begin, length, unit offset); empty ranges hold nothing
        self.ranges = sorted(r for r in ranges if r[1] > 0)
        self.begins = [r[0] for r in self.ranges]

    def at(self, address: int, size: int) -> int | None:
        """The offset of the unit holding `address`, else of the first range that begins
        inside [address, address + size); None when no unit holds any of it."""
        i = bisect.bisect_right(self.begins, address) - 1
        if i >= 0 and address < self.ranges[i][0] + self.ranges[i][1]:
            return self.ranges[i][2]
        if i + 1 < len(self.ranges) and self.ranges[i + 1][0] < address + size:
            return self.ranges[i + 1][2]
        return None


def compile_units(vmlinux: Path, functions: Mapping[int, tuple[int, int]]) -> dict[int, str]:
    """{key: DW_AT_name of the compile unit holding the function} for each (key, (address,
    size)); functions outside every unit are left out. Needs .debug_aranges."""
    from elftools.common.exceptions import DWARFError, ELFError
    from elftools.elf.elffile import ELFFile

    out: dict[int, str] = {}
    try:
        with open(vmlinux, "rb") as handle:
            elf = ELFFile(handle)
            if not elf.has_dwarf_info():
                raise KernelError(f"{vmlinux}: no DWARF debug info")
            dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            aranges = dwarf.get_aranges()
            if aranges is None:
                raise KernelError(f"{vmlinux}: no .debug_aranges")
            units = AddressUnits((e.begin_addr, e.length, e.info_offset) for e in aranges.entries)
            names: dict[int, str] = {}
            for key, (address, size) in functions.items():
                offset = units.at(address, size)
                if offset is None:
                    continue
                if offset not in names:
                    die = dwarf.get_CU_at(offset).get_top_DIE()
                    attr = die.attributes.get("DW_AT_name")
                    value = attr.value if attr else b""
                    names[offset] = value.decode("latin-1") if isinstance(value, bytes) else ""
                if names[offset]:
                    out[key] = names[offset]
    except (ELFError, DWARFError, OSError) as err:
        raise KernelError(f"{vmlinux}: cannot read its DWARF: {err}") from None
    return out
