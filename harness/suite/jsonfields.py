"""Typed fields of the JSON records a run writes (transcripts, memory records): a wrong type
is a TypeError, which each reader turns into its one-line error."""

from __future__ import annotations


def json_str(value: object) -> str:
    """A string field of a JSON record (TypeError otherwise: the reader makes it one line)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def json_int(value: object) -> int:
    """An integer field of a JSON record (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
