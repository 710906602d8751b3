"""Positions chosen by source file: `--sympos NAME@FILE` and KLP_SYMPOS_FILE annotations.

A position (`init_once,2`) differs from kernel to kernel; the source file that defines a
local does not. The caller gives a lookup `name -> {file: positions}` made from the target's
linked vmlinux (harness.kernels.sourcefiles: the STT_FILE blocks of its .symtab, positions
counted in kallsyms order as klp_find_object_symbol() counts); it is called only when a
file-based choice is there, so a kernel whose vmlinux must be downloaded is fetched only then.

The annotation: `KLP_MODULE_RELOC_FILE(obj) name[] = { KLP_SYMPOS_FILE(sym, "fs/inode.c") };`
puts packed `{void *sym; const char *file}` entries in `.klp.module_reloc_files.<obj>`;
both pointers are R_X86_64_64 relocations. The section (and its relocation section) is
consumed like `.klp.module_relocs.<obj>`; the packed {pointer, u32} entries stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from harness.errors import AmbiguousSymbolError, SourceFileChoiceError, UnsupportedElfError
from harness.klp.annotations import pointer_sections
from harness.klp.elfread import SHT_NOBITS, ElfImage, cstring
from harness.klp.files import printable
from harness.klp.symbols import VMLINUX
from harness.klp.tables import Symbols

FILE_ANNOTATION_PREFIX = ".klp.module_reloc_files."
FILE_ENTRY = 16  # packed {void *sym; const char *file}
MAX_PATH = 4096

# name -> {file (path in the source tree, or a base name when no better is known): positions}
SourceLookup = Callable[[str], Mapping[str, tuple[int, ...]]]


@dataclass(frozen=True)
class FileChoice:
    obj: str
    file: str
    section: str


def read_file_annotations(
    img: ElfImage, syms: Symbols, strtab: bytes
) -> tuple[dict[int, FileChoice], set[int]]:
    """({symbol index: file choice}, indexes of the sections to drop)."""
    found: dict[int, FileChoice] = {}
    dropped: set[int] = set()
    values = syms.values()
    what = "KLP_SYMPOS_FILE entry (packed {pointer, pointer to a string})"
    for found_sec in pointer_sections(
        img, FILE_ANNOTATION_PREFIX, dropped, align=8, width=8, what=what
    ):
        sec, obj = found_sec.section, found_sec.obj
        entries: dict[int, dict[int, tuple[int, int]]] = {}
        for off, index, addend in found_sec.pointers:
            entries.setdefault(off - off % FILE_ENTRY, {})[off % FILE_ENTRY] = (index, addend)
        for start, pair in sorted(entries.items()):
            if set(pair) != {0, 8}:
                raise UnsupportedElfError(
                    f"{img.label}: {sec.label}+{start:#x}: a KLP_SYMPOS_FILE entry needs both "
                    "its symbol and its file name"
                )
            index = pair[0][0]
            file = _string(img, syms, values, *pair[8], f"{sec.label}+{start + 8:#x}")
            name = cstring(strtab, syms.names[index])
            old = found.get(index)
            if old and (old.obj, old.file) != (obj, file):
                raise AmbiguousSymbolError(
                    f"{img.label}: '{printable(name)}' is given two source files: "
                    f"{printable(old.file)} and {printable(file)}"
                )
            found[index] = FileChoice(obj, file, sec.name)
    return found, dropped


def _string(
    img: ElfImage, syms: Symbols, values: Sequence[int], index: int, addend: int, where: str
) -> str:
    """The NUL-terminated string a relocation (symbol + addend) points at."""
    shndx = syms.shndx[index] if 0 < index < len(syms) else 0
    if not 0 < shndx < len(img.sections) or img.sections[shndx].type == SHT_NOBITS:
        raise UnsupportedElfError(f"{img.label}: {where}: the file name is not in the module")
    data = img.section_bytes(shndx)
    start = values[index] + addend
    end = data.find(b"\0", start, start + MAX_PATH) if 0 <= start < len(data) else -1
    if end < 0:
        raise UnsupportedElfError(f"{img.label}: {where}: the file name is not a C string")
    return data[start:end].decode("utf-8", "replace")


def matching_files(files: Mapping[str, tuple[int, ...]], wanted: str) -> list[str]:
    """The index's files that `wanted` names: the same path, or a path ending in it at a
    directory boundary (`proc/inode.c`); a bare base name in the index (a block whose full
    path was not known) matches a path with that base name."""
    wanted = wanted.removeprefix("./")
    base = wanted.rsplit("/", 1)[-1]
    return [
        f for f in files if f == wanted or f.endswith("/" + wanted) or ("/" not in f and f == base)
    ]


def resolve_file(label: str, name: str, file: str, lookup: SourceLookup, count: int) -> int:
    """The position of the `name` that `file` defines, among the `count` vmlinux symbols of
    that name; SourceFileChoiceError (one line, with the candidates) when it is not one."""
    files = lookup(name)
    shown, where = printable(name), printable(file)
    if count <= 1 and not files:
        return 0  # unique in vmlinux: nothing to choose (the index holds duplicates only)
    listed = "; ".join(
        f"{printable(f)}: {','.join(map(str, p))}" for f, p in sorted(files.items(), key=_first)
    )
    hits = matching_files(files, file)
    if not hits:
        raise SourceFileChoiceError(
            f"{label}: no '{shown}' from {where} in vmlinux (files and positions: "
            f"{listed or 'none'})"
        )
    positions = sorted({p for f in hits for p in files[f]})
    if len(positions) > 1:
        raise SourceFileChoiceError(
            f"{label}: {where} matches {len(positions)} symbols '{shown}' in vmlinux "
            f"(files and positions: {listed}); choose one with --sympos {shown}=N"
        )
    return positions[0]


def _first(item: tuple[str, tuple[int, ...]]) -> int:
    return min(item[1])


def choose_by_file(
    label: str,
    todo: Mapping[str, int],
    files: Mapping[str, str],
    annotated: Mapping[int, FileChoice],
    numeric: Mapping[str, int],
    counts: Callable[[str], int],
    lookup: SourceLookup | None,
) -> tuple[dict[str, int], list[str], list[str]]:
    """({name: position}, notes, warnings) for the names to convert that a file chooses:
    `files` from `--sympos NAME@FILE` (these win over annotations), `annotated` from
    KLP_SYMPOS_FILE by symbol index. `numeric` are the NAME=N choices: a name may not have
    both. `counts(name)` is the number of vmlinux symbols of that name."""
    warnings = [
        f"--sympos {printable(n)}@{printable(f)}: not converted here, ignored"
        for n, f in sorted(files.items())
        if n not in todo
    ]
    wanted: dict[str, str] = {}
    for name, index in todo.items():
        note = annotated.get(index)
        if note is not None and note.obj != VMLINUX:
            raise SourceFileChoiceError(
                f"{label}: KLP_SYMPOS_FILE for '{printable(name)}' of {printable(note.obj)}: "
                "source files are known for vmlinux only"
            )
        file = files.get(name, note.file if note else None)
        if file is None:
            continue
        if name in numeric:
            raise SourceFileChoiceError(
                f"{label}: '{printable(name)}' is given both a position ({numeric[name]}) and "
                f"a source file ({printable(file)}); give one"
            )
        wanted[name] = file
    if not wanted:
        return {}, [], warnings
    if lookup is None:
        raise SourceFileChoiceError(
            f"{label}: a position chosen by source file needs the target's linked vmlinux: "
            "give --kernel SPEC (not --system-map)"
        )
    chosen: dict[str, int] = {}
    notes = []
    for name, file in sorted(wanted.items()):
        chosen[name] = resolve_file(label, name, file, lookup, counts(name))
        notes.append(f"'{printable(name)}' from {printable(file)} is position {chosen[name]}")
    return chosen, notes, warnings
