"""Clang LTO names: a module's `foo` and the target's `foo.llvm.<hash>`.

With clang (Thin)LTO, a static function or object that another translation unit ends up
referencing is promoted to a global and renamed `<name>.llvm.<hash>`, the hash a decimal
number per source file (the module ID). Since the kernel's kallsyms lookups became exact
(Aug 2024, "kallsyms: Match symbols exactly with CONFIG_LTO_CLANG"; in 6.12 and in the
stable kernels) the livepatch resolver compares whole names: kernel/livepatch/core.c
klp_find_object_symbol() counts, in address order, the symbols whose name is exactly the klp
name (kallsyms_on_each_match_symbol() for vmlinux; strcmp() in klp_find_callback() for a
module), and kernel/kallsyms.c of 7.3 strips no suffix anywhere. So a klp symbol must be
`.klp.sym.vmlinux.foo.llvm.<hash>,<pos>`, and <pos> counts only symbols of that full name.

A module's source still says `foo`. Its candidates on an LTO kernel are every symbol named
`foo` or `foo.llvm.<hash>`, numbered in address order (the numbering `--sympos foo=N` and
KLP_SYMPOS use, as on a kernel built without LTO, where all of them are `foo`); the chosen one
becomes its full name and its position among symbols of exactly that name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from harness.klp.files import printable

SUFFIX = ".llvm."
_PROMOTED = re.compile(r"^(?P<base>.+)\.llvm\.[0-9]+$")

# (address, nm type letter) per name, in table order: SymbolTable's per-object map.
Entries = Mapping[str, Sequence[tuple[int, str]]]


def base_name(name: str) -> str:
    """`foo` for `foo.llvm.123`; other names unchanged."""
    m = _PROMOTED.match(name)
    return m.group("base") if m else name


def is_promoted(name: str) -> bool:
    return _PROMOTED.match(name) is not None


# Index of promoted names by base name, per symbol map (a table holds about 100,000 names;
# a conversion asks for a few): built once per map. Keeps the map itself so its id stays
# unique while cached.
_INDEX: dict[int, tuple[Entries, int, dict[str, list[str]]]] = {}
_INDEX_SIZE = 8


def _promoted_index(objmap: Entries) -> dict[str, list[str]]:
    cached = _INDEX.get(id(objmap))
    if cached is not None and cached[0] is objmap and cached[1] == len(objmap):
        return cached[2]
    index: dict[str, list[str]] = {}
    for name in objmap:
        if SUFFIX in name and (m := _PROMOTED.match(name)):
            index.setdefault(m.group("base"), []).append(name)
    if len(_INDEX) >= _INDEX_SIZE:
        _INDEX.pop(next(iter(_INDEX)))
    _INDEX[id(objmap)] = (objmap, len(objmap), index)
    return index


def promoted_names(objmap: Entries, name: str) -> list[str]:
    """The `name.llvm.<hash>` names of the map (none for a name that is itself suffixed)."""
    if is_promoted(name):
        return []
    return list(_promoted_index(objmap).get(name, ()))


def namesakes(objmap: Entries, name: str) -> list[tuple[str, int, int, str]]:
    """Every symbol a module's reference to `name` may mean when the map holds a promoted
    `name.llvm.<hash>`: (full name, the kernel's position for that full name (0 when it is
    unique), address, type), in address order. Empty when nothing of `name` was promoted:
    then the name is looked up as it is."""
    promoted = promoted_names(objmap, name)
    if not promoted:
        return []
    found: list[tuple[int, int, str, int, str]] = []  # address, order, name, position, type
    for full in [name, *sorted(promoted)]:
        entries = objmap.get(full, ())
        for rank, (address, kind) in enumerate(entries, 1):
            position = rank if len(entries) > 1 else 0
            found.append((address, len(found), full, position, kind))
    found.sort()
    return [(full, position, address, kind) for address, _, full, position, kind in found]


class Named(Protocol):
    """A candidate as harness.klp.symbols.Candidate gives it."""

    @property
    def name(self) -> str: ...  # the full kallsyms name; "" when no namesake is promoted

    @property
    def sympos(self) -> int: ...  # the kernel's position for that full name


def klp_target(candidates: Sequence[Named], name: str, sympos: int) -> tuple[str, int]:
    """The (name, sympos) a klp symbol needs for the `sympos`-th of `candidates` (0: the
    only one): the full `.llvm.` name and its own position when the candidate has one,
    else `name` and `sympos` as they are."""
    index = sympos - 1 if sympos > 0 else 0
    if (sympos > 0 or len(candidates) == 1) and index < len(candidates):
        chosen = candidates[index]
        if chosen.name:
            return chosen.name, chosen.sympos
    return name, sympos


def not_found_hint(objmap: Entries, name: str) -> str:
    """For a klp name the map does not hold: the names the kernel would need instead
    (same base name, other or no `.llvm.` suffix), or ""."""
    base = base_name(name)
    others = [n for n in [base, *_promoted_index(objmap).get(base, ())] if n != name]
    others = [n for n in others if n in objmap]
    if not others:
        return ""
    shown = ", ".join(printable(n) for n in others[:8]) + (
        f" and {len(others) - 8} more" if len(others) > 8 else ""
    )
    return (
        f"; the kernel matches names exactly (clang LTO suffixes included): this table has {shown}"
    )
