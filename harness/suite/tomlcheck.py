"""Checks of values read from a TOML data file, each failing with one ExpectationError line
that names where the value is and what it must be."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from harness.errors import ExpectationError


def version(text: object, where: str) -> tuple[int, ...]:
    if not isinstance(text, str) or not re.fullmatch(r"\d+(\.\d+){0,2}", text):
        raise ExpectationError(f'{where}: kernel version must look like "5.10", got {text!r}')
    return tuple(int(p) for p in text.split("."))


def strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExpectationError(f"{where}: expected a list of strings")
    return tuple(value)


def regexes(value: object, where: str) -> tuple[str, ...]:
    patterns = strings(value, where)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ExpectationError(f"{where}: bad regex {pattern!r}: {err}") from None
    return patterns


KINDS = {str: "a string", int: "an integer", bool: "true or false"}


def toml_text(value: object) -> str:
    """A value as TOML spells it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    return "a table" if isinstance(value, dict) else type(value).__name__


def typed(table: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    """`table[key]` (else `default`) of exactly type `kind` (a boolean is no integer)."""
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ExpectationError(f"{where}: `{key}` must be {KINDS[kind]}, got {toml_text(value)}")
    return value


def check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ExpectationError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
