"""Which source file each duplicated vmlinux symbol comes from, for `--sympos NAME@FILE`.

The linked vmlinux's .symtab lists every object file's local symbols after that file's
STT_FILE symbol (this is how kpatch tells duplicated locals apart). An STT_FILE symbol holds
only the base name (`inode.c`: fs/inode.c and fs/proc/inode.c alike), so the full path of a
block comes from the build: the DWARF compile unit at a block's address (a Debian -dbg
vmlinux), or the linked object file whose local symbols the block holds (a source-built or
local tree, which keeps its .o files). Each symbol's address then gives its position: the
n-th vmlinux symbol of that name in the kernel's own kallsyms table (kernel.kallsyms),
the order klp_find_object_symbol() counts in.

Only the compact index (file, name, position) of names that occur more than once is kept in
the cache; Debian's -dbg package (about 860 MB) is fetched only when a file-based choice
needs it, and deleted once the index is written.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.kernel import Kernel
from harness.kernels.spec import parse_spec
from harness.klp.symbols import VMLINUX, SymbolTable

FORMAT = "# klp-harness source-file index 1: file<TAB>name<TAB>position"
GLOBAL = "(global)"  # globals follow every STT_FILE block: no file to tell
STT_OBJECT, STT_FUNC, STT_FILE = 1, 2, 4
_SYM = struct.Struct("<IBBHQQ")


@dataclass(frozen=True)
class Block:
    """One STT_FILE block of vmlinux's .symtab: the base name and its symbols (name, type,
    address, size), in symtab order. `file` is None for the globals after the last block."""

    file: str | None
    symbols: tuple[tuple[str, int, int, int], ...]

    def first_function(self) -> tuple[int, int] | None:
        """(address, size) of the block's first function."""
        return next(((a, z) for _, t, a, z in self.symbols if t == STT_FUNC and a), None)

    def local_names(self) -> frozenset[str]:
        return frozenset(n for n, t, _, _ in self.symbols if t in (STT_FUNC, STT_OBJECT))


def symtab_blocks(path: Path) -> list[Block]:
    """vmlinux's .symtab split at each STT_FILE symbol (struct-read: 100,000s of symbols)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as handle:
            elf = ELFFile(handle)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise KernelError(f"{path}: no .symtab (a stripped vmlinux?)")
            data = symtab.data()
            strtab = elf.get_section(symtab["sh_link"]).data()
    except (ELFError, OSError) as err:
        raise KernelError(f"{path}: cannot read the symbol table: {err}") from None
    blocks: list[Block] = []
    current: str | None = None
    symbols: list[tuple[str, int, int, int]] = []
    for name_off, info, _other, _shndx, value, size in _SYM.iter_unpack(data):
        end = strtab.find(b"\0", name_off)
        name = strtab[name_off:end].decode("latin-1")
        kind, bind = info & 0xF, info >> 4
        if kind == STT_FILE:
            blocks.append(Block(current, tuple(symbols)))
            current, symbols = name, []
        elif bind == 0 and current is not None:
            symbols.append((name, kind, value, size))
        elif bind != 0:  # globals: after all locals
            if current is not None:
                blocks.append(Block(current, tuple(symbols)))
                current, symbols = None, []
            symbols.append((name, kind, value, size))
    blocks.append(Block(current, tuple(symbols)))
    return [b for b in blocks if b.symbols]


@dataclass(frozen=True)
class SourceEntry:
    file: str  # path in the source tree ("fs/inode.c"), a base name if no better is known
    name: str
    position: int


def build_index(
    blocks: list[Block], table: SymbolTable, paths: Mapping[int, str]
) -> list[SourceEntry]:
    """(file, name, position) for every symbol of a name that occurs more than once among
    `table`'s vmlinux symbols; `paths` gives a block's full path by its index in `blocks`.
    Symbols kallsyms does not list (absent from the running kernel's table) are left out."""
    vmlinux = table.objects.get(VMLINUX, {})
    out: list[SourceEntry] = []
    for index, block in enumerate(blocks):
        for name, _kind, address, _size in block.symbols:
            entries = vmlinux.get(name)
            if not entries or len(entries) < 2:
                continue
            position = next((i for i, (a, _) in enumerate(entries, 1) if a == address), 0)
            if position:
                where = GLOBAL if block.file is None else paths.get(index, block.file)
                out.append(SourceEntry(where, name, position))
    return sorted(set(out), key=lambda e: (e.name, e.position, e.file))


def index_text(entries: list[SourceEntry]) -> str:
    return FORMAT + "\n" + "".join(f"{e.file}\t{e.name}\t{e.position}\n" for e in entries)


def parse_index(text: str, source: str) -> list[SourceEntry]:
    lines = text.splitlines()
    if not lines or lines[0] != FORMAT:
        raise KernelError(f"{source}: not a klp-harness source-file index")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].isdigit():
            raise KernelError(f"{source}:{lineno}: not a 'file name position' line")
        out.append(SourceEntry(parts[0], parts[1], int(parts[2])))
    return out


def lookup_table(entries: list[SourceEntry]) -> dict[str, dict[str, tuple[int, ...]]]:
    """{name: {file: positions}}: what the converter's file-based choice takes."""
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for e in entries:
        files = out.setdefault(e.name, {})
        files[e.file] = (*files.get(e.file, ()), e.position)
    return out


# -- where the blocks' full paths come from --------------------------------------------------


def tree_paths(blocks: list[Block], tree: Path) -> dict[int, str]:
    """Full paths of the blocks (when some base name occurs twice), found among the tree's
    linked objects (the members of vmlinux.a / built-in.a and lib.a, in link order) as the
    first unused one of that base name whose local symbols include the block's (kpatch's
    match)."""
    from harness.kernels.objfiles import linked_objects, object_locals

    shared = _shared_names(blocks)
    if not shared:
        return {}
    by_base: dict[str, list[str]] = {}
    for rel in linked_objects(tree):
        base = Path(rel).stem
        by_base.setdefault(base, []).append(rel)
    paths: dict[int, str] = {}
    used: set[str] = set()
    for index, block in enumerate(blocks):
        if block.file is None:
            continue
        objs = [o for o in by_base.get(Path(block.file).stem, []) if o not in used]
        names = block.local_names()
        if not names:
            continue  # nothing to tell the objects apart by: the base name stays
        fitting = [o for o in objs if names <= object_locals(tree / o)]
        if fitting:
            used.add(fitting[0])  # identical sets: link order decides, as the link did
            paths[index] = str(Path(fitting[0]).with_suffix(Path(block.file).suffix))
    return paths


def _shared_names(blocks: list[Block]) -> set[str]:
    seen: dict[str, int] = {}
    for b in blocks:
        if b.file is not None:
            seen[b.file] = seen.get(b.file, 0) + 1
    return {f for f, n in seen.items() if n > 1}


def dwarf_paths(blocks: list[Block], vmlinux: Path) -> dict[int, str]:
    """Full paths of every block with a function, from the DWARF compile unit that holds its
    first function (.debug_aranges; by the function's whole range, see AddressUnits)."""
    from harness.kernels.objfiles import compile_units

    wanted = {
        i: a for i, b in enumerate(blocks) if b.file is not None and (a := b.first_function())
    }
    found = compile_units(vmlinux, wanted)
    return {i: name for i, name in found.items() if _same_file(blocks[i].file, name)}


# kbuild renames the symbols of some objects with objcopy --prefix-symbols, STT_FILE names
# included (arm64: the KVM hyp code, the EFI stub, kernel/pi)
SYMBOL_PREFIXES = ("", "__kvm_nvhe_", "__pi_", "__efistub_")


def _same_file(stt_file: str | None, unit: str) -> bool:
    """Whether the compile unit found at a block's address is the block's own file: a guard,
    as the unit was found by address."""
    base = Path(unit).name
    return any(stt_file == prefix + base for prefix in SYMBOL_PREFIXES)


# -- the cached index per kernel -------------------------------------------------------------


def index_path(kernel: Kernel) -> Path:
    return cache_dir("sourcefiles") / f"{cache_key(kernel.name + '_' + kernel.package_version)}.tsv"


def _tree_vmlinux(kernel: Kernel) -> Path | None:
    kind = parse_spec(kernel.spec).kind
    if kind in ("source", "local"):
        vmlinux = kernel.headers / "vmlinux"
        if not vmlinux.is_file():
            raise KernelError(f"{kernel.name}: {vmlinux} missing: the build tree is incomplete")
        return vmlinux
    return None


def source_index(kernel: Kernel, *, printer: Printer | None = None) -> list[SourceEntry]:
    """The kernel's (file, name, position) index, built once and cached."""
    printer = printer or Printer()
    path = index_path(kernel)
    tree = _tree_vmlinux(kernel)
    stamp = f"{tree.stat().st_size} {tree.stat().st_mtime_ns}" if tree else kernel.package_version
    with locked(path):
        stamp_file = path.with_suffix(".stamp")
        if path.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
            return parse_index(path.read_text(), str(path))
        table = SymbolTable.load(kernel.kallsyms)
        if tree is not None:
            printer.say(f"indexing the source files of {tree}")
            blocks = symtab_blocks(tree)
            entries = build_index(blocks, table, tree_paths(blocks, tree.parent))
        else:
            from harness.kernels.debugpkg import debug_vmlinux

            with debug_vmlinux(kernel, printer) as vmlinux:
                printer.say(f"indexing the source files of {vmlinux.name}")
                blocks = symtab_blocks(vmlinux)
                entries = build_index(blocks, table, dwarf_paths(blocks, vmlinux))
        atomic_write_text(path, index_text(entries))
        atomic_write_text(path.with_suffix(".stamp"), stamp)
        printer.say(
            f"kept a source-file index of {len(entries)} duplicated symbols "
            f"({path.stat().st_size // 1024} KiB) in {path}"
        )
        return entries


class SourceFiles:
    """The converter's file lookup for one kernel (`name -> {file: positions}`), loading the
    index only when the first file-based choice asks."""

    def __init__(self, kernel: Kernel, printer: Printer | None = None) -> None:
        self.kernel, self.printer = kernel, printer or Printer()
        self._table: dict[str, dict[str, tuple[int, ...]]] | None = None

    def __call__(self, name: str) -> Mapping[str, tuple[int, ...]]:
        if self._table is None:
            self._table = lookup_table(source_index(self.kernel, printer=self.printer))
        return self._table.get(name, {})


def file_position(kernel: Kernel, symtab: SymbolTable, name: str, file: str) -> int:
    """The position of the `name` that source `file` defines in `kernel` (expect.toml's
    `sympos = { name = "fs/inode.c" }`), for the build's KLP_SYMPOS_<name> define."""
    from harness.klp.sourcefile import resolve_file

    count = len(symtab.candidates(name))
    return resolve_file(kernel.name, name, file, SourceFiles(kernel), count)
