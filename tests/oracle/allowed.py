"""Differences the oracle may report that are not converter bugs, each with its reason (like
libbpf/ci's splat allow-list). A difference matches only if its pattern matches AND the fact
the reason rests on holds in the kernel's table: nothing is allowed by its text alone."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from oracle.compare import LOAD_CONVERTED, Difference
from oracle.loader import KernelTable


@dataclass(frozen=True)
class Allowed:
    kind: str
    pattern: re.Pattern[str]
    holds: Callable[[re.Match[str], KernelTable], bool]
    reason: str


def _only_at_zero(m: re.Match[str], table: KernelTable) -> bool:
    entries = table.entries.get(m.group("name"), [])
    return bool(entries) and all(addr == 0 for addr, _ in entries)


ALLOWED = (
    Allowed(
        LOAD_CONVERTED,
        re.compile(r"symbol '(?P<name>[^']+)' not found in symbol table"),
        _only_at_zero,
        "a per-CPU symbol at offset 0 (fixed_percpu_data on 6.1): klp_find_object_symbol() "
        "takes address 0 for 'not found', so no klp relocation can reach it, while the export "
        "can; the converter says so ('the kernel will refuse it'). A limit of the klp ABI, "
        "not a wrong image",
    ),
)


def explain(diff: Difference, table: KernelTable) -> str | None:
    """The reason `diff` is allowed, or None when it is unexplained."""
    for rule in ALLOWED:
        m = rule.pattern.fullmatch(diff.detail)
        if rule.kind == diff.kind and m and rule.holds(m, table):
            return rule.reason
    return None
