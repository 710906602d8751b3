"""Reading a loaded module's memory in the guest, through /proc/kcore.

The boot's first module takes two guest commands: one reads its section addresses from
/sys/module/<m>/sections and the first pages of /proc/kcore (its ELF header and program
headers); the host maps the pages holding the relocated fields to kcore file offsets
through the PT_LOAD headers, then one script `dd`s each run of pages into the shared
directory. Every later module takes one command: the shell itself maps each section's
address through the PT_LOAD the first module was in, and the host checks the addresses it
printed lie in that range (else it reads them the first way). The guest is hostile: every
number it prints and every file it writes is checked (format, range, size) before use.
Failures a kernel can give (no /proc/kcore, a refused read) become one line in the record,
which fails the step; the guest goes on.
"""

from __future__ import annotations

import re
import shlex
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from harness.errors import BootError

PAGE = 4096
HEADER_PAGES = 4  # ELF header and program headers: a few hundred bytes per memory range
MAX_PHNUM = 1024
MAX_READ = 16 << 20  # bytes read per module (one page per relocated field at most)
NO_KCORE_MARK = "klp-harness:no-kcore"
DD_FAILED_MARK = "klp-harness:dd-failed"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")  # p_type p_flags p_offset p_vaddr p_paddr p_filesz ...
PT_LOAD = 1
_SECTION_LINE = re.compile(r"(\S+) (0x[0-9a-f]{1,16}|-)")
_NAME = re.compile(r"[A-Za-z0-9_.$-]{1,200}")
# /proc/kallsyms lines of a module object: read while the module is loaded
_MODULE_SYMBOL = re.compile(r"([0-9a-f]{16}) [A-Za-z] (\S{1,512})\t\[([A-Za-z0-9_-]{1,55})\]")
MAX_MODULE_SYMBOLS = 100_000


class KcoreError(BootError):
    """/proc/kcore could not be read, or its answer is not what a kernel gives."""


@runtime_checkable
class KcoreGuest(Protocol):
    def run(self, cmd: str, timeout: float = 60, note: str | None = None) -> _Result: ...

    def read_file(self, name: str, limit: int = ...) -> bytes: ...


class _Result(Protocol):
    @property
    def output(self) -> str: ...

    @property
    def status(self) -> int: ...


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    size: int


@dataclass(frozen=True)
class ModuleMemory:
    """What was read: section bases, and the bytes at each asked field ("" if not read)."""

    error: str
    bases: dict[str, int]
    fields: tuple[bytes, ...]
    # (object, name, address) of the module objects asked for, in kallsyms order
    symbols: tuple[tuple[str, str, int], ...] = ()


class KcoreReader:
    """One guest's kcore: its program headers read once, then module memory on demand."""

    def __init__(self, guest: KcoreGuest) -> None:
        self.guest = guest
        self._segments: list[Segment] | None = None
        self._modules: Segment | None = None  # the PT_LOAD a module was found in
        self._seq = 0

    def read(
        self, module: str, fields: Sequence[tuple[str, int, int]], objects: Sequence[str] = ()
    ) -> ModuleMemory:
        """The bytes at each (section, offset, width) of loaded `module`, and the kallsyms
        entries of the module `objects` its klp symbols name (they may unload later). A field
        may be a whole span: harness.suite.memcheck.reads asks for an arm64 module's .plt
        this way, where the loader sends branches out of range, and a ppc64 module's .stubs,
        where every call to another object goes (and a .toc slot, for the .toc's base)."""
        odd = [name for name in (module, *objects) if not _NAME.fullmatch(name)]
        if odd:  # never into a shell line
            return ModuleMemory(f"cannot verify in memory: module name {odd[0]!r}", {}, ())
        names = sorted({s for s, _, _ in fields})
        if not fields:
            return ModuleMemory("", {}, ())
        self._seq += 1
        head = f"kcore.head.{self._seq}"
        directory = shlex.quote(f"/sys/module/{module}/sections")
        script = [
            f"[ -r /proc/kcore ] || {{ echo {NO_KCORE_MARK}; exit 0; }}",
            f"for n in {' '.join(shlex.quote(n) for n in names)}; do",
            f'  printf "%s %s\\n" "$n" "$(cat {directory}/"$n" 2>/dev/null || echo -)"',
            "done",
        ]
        for obj in sorted(set(objects)):
            script.append(f"grep -F {shlex.quote(chr(9) + '[' + obj + ']')} /proc/kallsyms")
        if self._segments is None:
            script.append(_dd(head, PAGE, 0, HEADER_PAGES))
        fast = self._modules
        if fast is not None:  # one command: shell arithmetic maps each section to kcore
            script += _fast_reads(directory, fast, _spans(fields), self._seq)
        result = self.guest.run("\n".join(script), note=f"kcore: memory of {module}")
        if NO_KCORE_MARK in result.output:
            return ModuleMemory("cannot verify in memory: no /proc/kcore", {}, ())
        bases = _parse_bases(result.output, names)
        try:  # what a real kernel can refuse (lockdown) or a hostile one garble: one line
            places = [(bases[s] + off, width) if s in bases else None for s, off, width in fields]
            symbols = _parse_symbols(result.output, objects)
            if fast is not None and all(_inside(fast, p) for p in places if p):
                _check_dd(result.output)
                return ModuleMemory("", bases, self._fast_fields(fast, fields, bases), symbols)
            if self._segments is None:  # the header's dd is the only one that ran
                _check_dd(result.output)
                self._segments = parse_segments(self.guest.read_file(head, HEADER_PAGES * PAGE))
            # the first module, or one outside the range the shell assumed: the files it
            # made are not used
            self._modules = next(
                (g for g in self._segments for p in places if p and _inside(g, p)), None
            )
            return ModuleMemory("", bases, self._read_places(places), symbols)
        except KcoreError as err:
            return ModuleMemory(f"cannot verify in memory: {err}", bases, ())

    def _fast_fields(
        self, seg: Segment, fields: Sequence[tuple[str, int, int]], bases: Mapping[str, int]
    ) -> tuple[bytes, ...]:
        """The fields from the files `_fast_reads` made (bases checked inside `seg`)."""
        files: dict[str, tuple[int, bytes]] = {}
        for i, (section, (low, high)) in enumerate(_spans(fields).items()):
            if section not in bases:
                continue
            first = (bases[section] + low - seg.vaddr + seg.offset) // PAGE
            last = (bases[section] + high - 1 - seg.vaddr + seg.offset) // PAGE
            size = (last - first + 1) * PAGE
            if size > MAX_READ:
                raise KcoreError(f"kcore: more than {MAX_READ} bytes to read")
            name = f"kcore.fast.{self._seq}.{i}"
            data = self.guest.read_file(name, size)
            if len(data) != size:
                raise KcoreError(f"kcore: {name}: {len(data)} bytes, expected {size}")
            files[section] = (first * PAGE, data)
        out = []
        for section, offset, width in fields:
            if section not in files:
                out.append(b"")
                continue
            start, data = files[section]
            at = bases[section] + offset - seg.vaddr + seg.offset - start
            out.append(data[at : at + width])
        return tuple(out)

    def _read_places(self, places: Sequence[tuple[int, int] | None]) -> tuple[bytes, ...]:
        assert self._segments is not None
        pages = sorted({a // PAGE for p in places if p for a in (p[0], p[0] + p[1] - 1)})
        runs: list[list[int]] = []
        for page in pages:
            if runs and runs[-1][1] == page:
                runs[-1][1] = page + 1
            else:
                runs.append([page, page + 1])
        if sum(stop - start for start, stop in runs) * PAGE > MAX_READ:
            raise KcoreError(f"kcore: more than {MAX_READ} bytes to read")
        commands, names = [], []
        for i, (start, stop) in enumerate(runs):
            offset = file_offset(self._segments, start * PAGE, (stop - start) * PAGE)
            name = f"kcore.mem.{self._seq}.{i}"
            block = _block(offset)
            count = (stop - start) * PAGE // block
            commands.append(_dd(name, block, offset // block, count))
            names.append(name)
        if commands:
            result = self.guest.run("\n".join(commands), note=f"kcore: {len(commands)} page runs")
            _check_dd(result.output)
        memory: dict[int, bytes] = {}
        for (start, stop), name in zip(runs, names, strict=True):
            size = (stop - start) * PAGE
            data = self.guest.read_file(name, size)
            if len(data) != size:
                raise KcoreError(f"kcore: {name}: {len(data)} bytes, expected {size}")
            memory[start] = data
        return tuple(b"" if p is None else _slice(memory, runs, *p) for p in places)


def _spans(fields: Sequence[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    """Per section, the offsets from the first field's start to the last one's end."""
    spans: dict[str, tuple[int, int]] = {}
    for section, offset, width in fields:
        low, high = spans.get(section, (offset, offset + width))
        spans[section] = (min(low, offset), max(high, offset + width))
    return dict(sorted(spans.items()))


def _fast_reads(
    directory: str, seg: Segment, spans: Mapping[str, tuple[int, int]], seq: int
) -> list[str]:
    """Shell lines that dd the pages of each section's fields (the loop before them prints
    the addresses the host checks); the shell computes the kcore offset (64-bit arithmetic
    modulo 2**64, as busybox ash does it) from the PT_LOAD of the boot's first module."""
    lines = []
    shift = hex((seg.offset - seg.vaddr) % (1 << 64))  # hex: ash reads it modulo 2**64
    for i, (section, (low, high)) in enumerate(spans.items()):
        quoted = shlex.quote(section)
        first, last = f"(b + {low} + {shift}) / {PAGE}", f"(b + {high - 1} + {shift}) / {PAGE}"
        lines.append(
            f"if b=$(cat {directory}/{quoted} 2>/dev/null); then "
            + _dd(f"kcore.fast.{seq}.{i}", PAGE, f"$(({first}))", f"$(({last} - {first} + 1))")
            + "; fi"
        )
    return lines


def _inside(seg: Segment, place: tuple[int, int]) -> bool:
    return seg.vaddr <= place[0] and place[0] + place[1] <= seg.vaddr + seg.size


def _dd(name: str, block: int, skip: int | str, count: int | str) -> str:
    """A dd of /proc/kcore into the shared dir that says when it failed (the file may then
    be missing: reading a missing file would stop the guest as hostile)."""
    return (
        f"dd if=/proc/kcore of={name} bs={block} skip={skip} count={count} 2>{name}.err "
        f"|| {{ echo {DD_FAILED_MARK}; head -c 300 {name}.err; }}"
    )


def _check_dd(output: str) -> None:
    if DD_FAILED_MARK in output:
        why = output.split(DD_FAILED_MARK, 1)[1].strip().splitlines()[:1]
        raise KcoreError(f"reading /proc/kcore failed: {why[0][:200] if why else 'dd failed'}")


def _block(offset: int) -> int:
    """dd's block size: the largest power of two up to a page dividing `offset`."""
    block = PAGE
    while offset % block:
        block //= 2
    return block


def _slice(memory: Mapping[int, bytes], runs: list[list[int]], address: int, width: int) -> bytes:
    for start, stop in runs:
        if start * PAGE <= address and address + width <= stop * PAGE:
            at = address - start * PAGE
            return memory[start][at : at + width]
    return b""


def _parse_symbols(output: str, objects: Sequence[str]) -> tuple[tuple[str, str, int], ...]:
    found = []
    for line in output.splitlines():
        match = _MODULE_SYMBOL.fullmatch(line.rstrip("\r"))
        if match is not None and match.group(3) in objects:
            found.append((match.group(3), match.group(2), int(match.group(1), 16)))
    if len(found) > MAX_MODULE_SYMBOLS:
        raise KcoreError(f"kcore: more than {MAX_MODULE_SYMBOLS} module symbols")
    return tuple(found)


def _parse_bases(output: str, names: Sequence[str]) -> dict[str, int]:
    bases: dict[str, int] = {}
    for line in output.splitlines():
        match = _SECTION_LINE.fullmatch(line.strip())
        if match is None or match.group(1) not in names:
            continue
        if match.group(2) != "-":
            bases.setdefault(match.group(1), int(match.group(2), 16))  # one line per name
    return bases


def parse_segments(head: bytes) -> list[Segment]:
    """The PT_LOAD ranges of a kcore ELF header; anything malformed raises KcoreError."""
    if len(head) < _EHDR.size or not head.startswith(b"\x7fELF\x02\x01"):
        raise KcoreError("/proc/kcore: not an ELF64 little-endian core file")
    fields = _EHDR.unpack_from(head)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phentsize != _PHDR.size or not 0 < phnum <= MAX_PHNUM:
        raise KcoreError(f"/proc/kcore: program headers {phnum} x {phentsize}")
    if phoff + phnum * _PHDR.size > len(head):
        raise KcoreError("/proc/kcore: program headers past the bytes read")
    segments = []
    for i in range(phnum):
        ptype, _, offset, vaddr, _, filesz, memsz, _ = _PHDR.unpack_from(head, phoff + i * 56)
        if ptype == PT_LOAD and filesz and vaddr + min(filesz, memsz) <= 1 << 64:
            segments.append(Segment(vaddr, offset, min(filesz, memsz)))
    return segments


def file_offset(segments: Sequence[Segment], address: int, size: int) -> int:
    """The kcore file offset of [address, address+size), inside one PT_LOAD."""
    for seg in segments:
        if seg.vaddr <= address and address + size <= seg.vaddr + seg.size:
            return seg.offset + address - seg.vaddr
    raise KcoreError(f"/proc/kcore: no PT_LOAD covers {address:#x}+{size:#x}")
