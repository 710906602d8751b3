"""The data files under kernels/: TOML files each holding one array of tables."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from harness.errors import ExpectationError


def read_tables(path: Path, key: str, what: str) -> list[Any]:
    """The `[[key]]` tables of `path` (absent: none); one ExpectationError line naming the
    file for anything else: unreadable, not TOML, another top-level key, not an array."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ExpectationError(f"{path}: cannot read {what}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ExpectationError(f"{path}: invalid TOML: {err}") from None
    extra = set(data) - {key}
    if extra:
        raise ExpectationError(f"{path}: unknown top-level keys {sorted(extra)} (only [[{key}]])")
    tables = data.get(key, [])
    if not isinstance(tables, list):
        raise ExpectationError(f"{path}: '{key}' must be an array of tables ([[{key}]])")
    return tables
