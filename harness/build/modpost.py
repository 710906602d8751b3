"""modpost's report of undefined symbols, in every format the kernels of the matrix print.

Up to 6.x: `WARNING: modpost: "name" [/abs/dir/mod.ko] undefined!`; from 6.x (7.3):
`WARNING: modpost: mod.ko: symbol 'name' undefined!` (ERROR: without KBUILD_MODPOST_WARN).
A line in neither format is an error: never convert less than modpost asked silently.
An export restricted to named modules (EXPORT_SYMBOL_FOR_MODULES, namespace `module:<names>`,
7.x) is not `undefined!` but used "from namespace 'module:...'": for any other module it is as
good as unexported (with CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS=y on make's command
line modpost only warns).
"""

from __future__ import annotations

import re

from harness.errors import BuildError

_UNDEFINED = (
    re.compile(r'modpost: "(?P<name>[^"]+)" \[(?P<module>[^\]]+)\] undefined!$'),
    re.compile(r"modpost: (?P<module>\S+): symbol '(?P<name>[^']+)' undefined!$"),
)


_RESTRICTED = re.compile(
    r"modpost: (?P<module>\S+): module uses symbol '(?P<name>[^']+)' from namespace "
    r"'module:[^']*', but does not import it\.?$"
)


def restricted_by_module(log_text: str) -> dict[str, list[str]]:
    """Exports restricted to other modules that each module uses, sorted."""
    found: dict[str, set[str]] = {}
    for line in log_text.splitlines():
        if m := _RESTRICTED.search(line.rstrip()):
            found.setdefault(m.group("module"), set()).add(m.group("name"))
    return {module: sorted(names) for module, names in found.items()}


def undefined_by_module(log_text: str) -> dict[str, list[str]]:
    """modpost's `undefined!` names per module as modpost names it, sorted."""
    found: dict[str, set[str]] = {}
    for line in log_text.splitlines():
        line = line.rstrip()
        if "modpost: " not in line or not line.endswith(" undefined!"):
            continue
        m = _UNDEFINED[0].search(line) or _UNDEFINED[1].search(line)
        if m is None:
            raise BuildError(f"cannot read modpost's report of an undefined symbol: {line!r}")
        found.setdefault(m.group("module"), set()).add(m.group("name"))
    return {module: sorted(names) for module, names in found.items()}


def undefined(log_text: str) -> list[str]:
    """Every name modpost reported as `undefined!`, whatever the module."""
    return sorted({n for names in undefined_by_module(log_text).values() for n in names})
