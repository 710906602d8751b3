"""Checks for one module step, on text: its kernel lines, the guest's /proc/kallsyms, taint.

Pure functions, used by harness.suite.judge. Sample modules print one line per symbol
they reached through a klp relocation:

    klp-harness: resolved <name>,<sympos> 0x<address>

`sympos` 0 means the name is unique among vmlinux symbols; n >= 1 the n-th vmlinux symbol
of that name in /proc/kallsyms order (the kernel's own sympos rule; module symbols, the lines
with a `[module]` column, do not count).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from harness.klp.symbols import KallsymsLine, kallsyms_lines
from harness.vm import dmesg

RESOLVED_RE = re.compile(
    r"klp-harness: resolved (?P<name>[^\s,]+),(?P<sympos>\d+) (?P<address>0x[0-9a-fA-F]+)\b"
)
SPLAT_CONTEXT = 4  # lines after a splat line kept as evidence (RIP, Call Trace head)


@dataclass
class KallsymsIndex:
    """/proc/kallsyms text, indexed by name; vmlinux entries keep file order (sympos order)."""

    vmlinux: dict[str, list[KallsymsLine]] = field(default_factory=dict)
    modules: dict[str, list[KallsymsLine]] = field(default_factory=dict)
    count: int = 0
    _by_address: dict[int, list[KallsymsLine]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def at_address(self, address: int) -> list[KallsymsLine]:
        """Every vmlinux symbol at `address` (for evidence: what a wrong address points at)."""
        if self._by_address is None:
            self._by_address = {}
            for entries in self.vmlinux.values():
                for entry in entries:
                    self._by_address.setdefault(entry.address, []).append(entry)
        return self._by_address.get(address, [])


def parse_kallsyms(text: str, source: str = "kallsyms") -> KallsymsIndex:
    """Parse /proc/kallsyms; a malformed line raises SymbolFileError naming `source` and line."""
    index = KallsymsIndex()
    for entry in kallsyms_lines(text, source):
        table = index.vmlinux if entry.module is None else index.modules
        table.setdefault(entry.name, []).append(entry)
        index.count += 1
    return index


@dataclass(frozen=True)
class Resolved:
    name: str
    sympos: int
    address: int
    line: str  # the dmesg message it came from


def parse_resolved(lines: Iterable[str]) -> list[Resolved]:
    out = []
    for line in lines:
        for m in RESOLVED_RE.finditer(line):
            out.append(
                Resolved(m.group("name"), int(m.group("sympos")), int(m.group("address"), 16), line)
            )
    return out


# address: a resolved address differs from kallsyms; symbol: kallsyms has no such symbol;
# missing: an expected line, check result or command did not happen; splat: a kernel splat;
# taint: a taint flag the step may not set.
FindingKind = Literal["address", "symbol", "missing", "splat", "taint"]


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    message: str
    evidence: tuple[str, ...] = ()  # dmesg lines, kallsyms lines

    def __str__(self) -> str:
        more = "".join(f"\n    {line}" for line in self.evidence)
        return f"{self.kind}: {self.message}{more}"


@dataclass(frozen=True)
class AddressCheck:
    resolved: Resolved
    entry: KallsymsLine | None  # the symbol the name and sympos select, if any

    @property
    def ok(self) -> bool:
        return self.entry is not None and self.entry.address == self.resolved.address


def select_symbol(index: KallsymsIndex, name: str, sympos: int) -> tuple[KallsymsLine | None, str]:
    """The vmlinux symbol `name,sympos` selects, else None and why (the kernel's rule)."""
    entries = index.vmlinux.get(name, [])
    if not entries:
        where = " (only in modules)" if name in index.modules else ""
        return None, f"{name!r} is not a vmlinux symbol in the guest's kallsyms{where}"
    if sympos == 0:
        if len(entries) > 1:
            return None, f"{name!r} has {len(entries)} vmlinux symbols, so sympos 0 is ambiguous"
        return entries[0], ""
    if sympos > len(entries):
        return None, f"{name!r} has {len(entries)} vmlinux symbol(s), no sympos {sympos}"
    return entries[sympos - 1], ""


def check_addresses(
    resolved: Sequence[Resolved], index: KallsymsIndex
) -> tuple[list[AddressCheck], list[Finding]]:
    checks, findings = [], []
    for res in resolved:
        entry, why = select_symbol(index, res.name, res.sympos)
        checks.append(AddressCheck(res, entry))
        label = f"{res.name},{res.sympos}"
        if entry is None:
            findings.append(Finding("symbol", f"{label}: {why}", (res.line,)))
        elif entry.address != res.address:
            there = index.at_address(res.address)
            zero = " (zero: the klp relocation was not applied)" if res.address == 0 else ""
            findings.append(
                Finding(
                    "address",
                    f"{label}: module saw {res.address:#x}{zero}, kallsyms has {entry.address:#x}",
                    (res.line, entry.raw, *(f"at {res.address:#x}: {e.raw}" for e in there)),
                )
            )
    return checks, findings


def check_expected(lines: Sequence[str], patterns: Iterable[str]) -> list[Finding]:
    """Each pattern (a regex, `re.search`) must match some line."""
    findings = []
    for pattern in patterns:
        rx = re.compile(pattern)
        if not any(rx.search(line) for line in lines):
            findings.append(Finding("missing", f"no dmesg line matches /{rx.pattern}/"))
    return findings


def check_splats(lines: Sequence[str]) -> list[Finding]:
    """One finding per kernel splat (WARNING, BUG, Oops, ...) among `lines`."""
    findings = []
    for splat in dmesg.scan_splats(list(lines)):
        context = tuple(lines[splat.index : splat.index + 1 + SPLAT_CONTEXT])
        findings.append(Finding("splat", f"{splat.kind}: {splat.line}", context))
    return findings


def check_taint(before: int, after: int, allowed: str = "OE") -> list[Finding]:
    """Flags set by the step other than `allowed` letters (default O out-of-tree, E unsigned)."""
    new = after & ~before & ~dmesg.letters_mask(allowed)
    if not new:
        return []
    return [
        Finding(
            "taint",
            f"new taint {dmesg.taint_describe(new)}; "
            f"before {dmesg.taint_letters(before) or 'none'}, after {dmesg.taint_letters(after)}",
            (f"/proc/sys/kernel/tainted: {before} -> {after}",),
        )
    ]
