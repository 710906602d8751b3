"""What a user's module directory builds, read from its Kbuild or Makefile as kbuild would.

Only what out-of-tree modules write is understood: `obj-m += a.o b.o` (also `:=`, `=`,
continuation lines, comments), and `$(NAME)` / `${NAME}` of a variable set plainly in the
same file (`MODULE := mymod` then `obj-m := $(MODULE).o`). Anything else in an obj-m entry
is refused with one line rather than guessed: the names become file names and guest commands.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import ExpectationError, HarnessError
from harness.fileio import read_regular

MAX_KBUILD_FILE = 1 << 20
KBUILD_FILES = ("Kbuild", "Makefile")  # kbuild reads Kbuild first when both exist
_ASSIGN = re.compile(r"^\s*(?:override\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(\+=|:=|::=|\?=|=)(.*)$")
_REFERENCE = re.compile(r"\$(?:\(([A-Za-z_][A-Za-z0-9_]*)\)|\{([A-Za-z_][A-Za-z0-9_]*)\})")
_OBJECT = re.compile(r"([A-Za-z0-9_-]{1,56})\.o")
_LIVEPATCH = re.compile(rb'MODULE_INFO\s*\(\s*livepatch\s*,\s*"Y"\s*\)')


def kbuild_file(directory: Path) -> Path:
    """The file kbuild reads in `directory`, or an ExpectationError saying there is none."""
    for name in KBUILD_FILES:
        if (directory / name).is_file():
            return directory / name
    raise ExpectationError(
        f"{directory}: no expect.toml, Kbuild or Makefile: not a module directory"
    )


def _logical_lines(text: str) -> list[str]:
    """Lines as make reads them: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [re.sub(r"(?<!\\)#.*", "", line) for line in joined.splitlines()]


def parse_obj_m(text: str, where: str) -> tuple[str, ...]:
    """The module names `obj-m` lists in a Kbuild/Makefile text, in order."""
    plain: dict[str, str] = {}
    modules: list[str] = []
    for line in _logical_lines(text):
        match = _ASSIGN.match(line)
        if match is None:
            continue
        name, op, value = match.group(1), match.group(2), match.group(3).strip()
        if name != "obj-m":
            if "$" not in value and op != "+=":
                plain[name] = value
            continue
        words = _REFERENCE.sub(lambda m: plain.get(m.group(1) or m.group(2), m.group(0)), value)
        found = []
        for word in words.split():
            obj = _OBJECT.fullmatch(word)
            if obj is None:
                raise ExpectationError(
                    f"{where}: obj-m lists {word!r}; the harness takes plain <name>.o "
                    "entries (or $(VAR).o of a plainly set VAR)"
                )
            found.append(obj.group(1))
        modules = [*modules, *found] if op == "+=" else found
    if not modules:
        raise ExpectationError(f"{where}: no `obj-m += <name>.o` line: which module does it build?")
    return tuple(dict.fromkeys(modules))


def kbuild_modules(directory: Path) -> tuple[str, ...]:
    """The modules a user's module directory builds, from its Kbuild or Makefile."""
    file = kbuild_file(directory)
    try:
        raw = read_regular(file, MAX_KBUILD_FILE)
    except HarnessError as err:
        raise ExpectationError(f"cannot read the module's {file.name}: {err}") from None
    return parse_obj_m(raw.decode("utf-8", "replace"), str(file))


def declares_livepatch(directory: Path) -> bool:
    """Whether a C source or header says MODULE_INFO(livepatch, "Y") (loaded as a livepatch)."""
    for path in sorted([*directory.rglob("*.c"), *directory.rglob("*.h")]):
        if path.is_file() and not path.is_symlink():
            try:
                if _LIVEPATCH.search(read_regular(path, 64 << 20)):
                    return True
            except HarnessError:
                continue  # the build's copy step reports unreadable sources
    return False
