"""A kernel's symbol table recovered from its vmlinuz (Debian ships no real System.map)."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_text
from harness.errors import KernelError
from harness.klp.symbols import KallsymsLine, kallsyms_lines
from harness.paths import python_tool

TOOL = "kallsyms-finder"
# kallsyms-finder prints the table on stdout already as /proc/kallsyms does; logs go to stderr.
_LINE = re.compile(r"^([0-9a-fA-F]{8,16}) ([A-Za-z]) (\S+)$")
_PLACEHOLDER = "The real System.map is in"


@dataclass(frozen=True)
class Recovered:
    path: Path
    count: int
    seconds: float


def is_placeholder_system_map(path: Path) -> bool:
    """Debian's one-line System.map that points at the -dbg package."""
    try:
        with open(path, errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return _PLACEHOLDER in head or len(head.splitlines()) < 2


def system_map_text(system_map: Path) -> int:
    """The link address of `_text` in a System.map; a KernelError when it has none."""
    with open(system_map, errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "_text":
                return int(parts[0], 16)
    raise KernelError(f"{system_map}: no _text symbol")


def recover(
    vmlinuz: Path,
    out: Path,
    timeout: float = 600,
    *,
    system_map: Path | None = None,
    anchors: Mapping[str, int] | None = None,
) -> Recovered:
    """Run kallsyms-finder on `vmlinuz`, write `out` as `<16-hex> <type> <name>` lines in
    the kernel's kallsyms order. Raises KernelError on any failure. An arm64 Image holds
    kallsyms relative to a base the tool guesses wrong (the image's load offset): with the
    build's `system_map` every address moves so that `_text` lands where it was linked;
    with `anchors` ({name: link address}, e.g. harness.kernels.anchors) so that every anchor
    found once in the table lands on its address, which must take one and the same move."""
    tool = python_tool(TOOL)
    if tool is None:
        raise KernelError(f"{TOOL} not found on PATH (install the vmlinux-to-elf package)")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [tool, str(vmlinuz)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"{TOOL} {vmlinuz}: no answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise KernelError(f"{TOOL} failed on {vmlinuz}: {last}")
    found = [m.groups() for ln in proc.stdout.splitlines() if (m := _LINE.match(ln.strip()))]
    shift = 0
    if system_map is not None:
        text = [int(a, 16) for a, _, name in found if name == "_text"]
        if not text:
            raise KernelError(f"{TOOL} found no _text in {vmlinuz}")
        shift = system_map_text(system_map) - text[0]
    elif anchors:
        shift = anchored_shift(found, anchors, vmlinuz)
    lines = [f"{(int(a, 16) + shift) % (1 << 64):016x} {t} {n}\n" for a, t, n in found]
    if len(lines) < 1000:
        raise KernelError(f"{TOOL} found only {len(lines)} symbols in {vmlinuz}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(lines))
    return Recovered(out, len(lines), time.monotonic() - start)


def anchored_shift(
    found: Sequence[Sequence[str]], anchors: Mapping[str, int], vmlinuz: Path
) -> int:
    """The one move that puts each anchor named once in `found` on its link address."""
    once = Counter(name for _, _, name in found)
    moves = Counter(
        (anchors[name] - int(a, 16)) % (1 << 64)
        for a, _, name in found
        if once[name] == 1 and name in anchors
    )
    if not moves:
        raise KernelError(f"none of {len(anchors)} anchor symbols is in the table of {vmlinuz}")
    if len(moves) > 1:
        raise KernelError(
            f"anchor symbols disagree on where the table of {vmlinuz} lies "
            f"({len(moves)} different bases); not placing it"
        )
    return next(iter(moves))


def from_system_map(system_map: Path, out: Path) -> Recovered:
    """The table of a kernel built here whose image kallsyms-finder cannot read (a ppc64le ELF
    vmlinux): its System.map, in address order as kallsyms is, without the linker's `?`
    marks (the suite checks it against the guest's /proc/kallsyms)."""
    start = time.monotonic()
    text = system_map.read_text(errors="replace")
    symbols = kallsyms_lines(text, str(system_map))
    lines = [f"{s.address:016x} {s.type} {s.name}\n" for s in symbols if s.type != "?"]
    if len(lines) < 1000:
        raise KernelError(f"{system_map}: only {len(lines)} symbols")
    atomic_write_text(out, "".join(lines))
    return Recovered(out, len(lines), time.monotonic() - start)


def count(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def read(path: Path) -> list[KallsymsLine]:
    """The recovered table's symbols in file order (SymbolFileError on a malformed line)."""
    return list(kallsyms_lines(path.read_text(errors="replace"), str(path)))
