"""The Debian releases the harness knows, read from kernels/releases/debian.toml (format:
kernels/README.md): which suites the private apt root lists, which `debian:RELEASE` specs
exist, and which release's build root ships a given gcc."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ExpectationError
from harness.kernels.datafile import read_tables
from harness.paths import RELEASES_FILE

DEFAULT_FILE = RELEASES_FILE

ENV_VAR = "KLP_HARNESS_RELEASES"  # another releases file (tests, a newer mirror)

# The extra suites a release may have on the mirrors; "backports" is a spec of its own.
EXTRA_SUITES = ("updates", "security", "backports")
_KEYS = {"codename", "version", "suites", "gcc"}
_CODENAME = re.compile(r"^[a-z]+$")  # what a `debian:RELEASE[-backports][-cloud]` spec reads


@dataclass(frozen=True)
class Release:
    """One [[release]] table."""

    codename: str  # "bookworm"
    version: str  # "12"; "unstable" for sid
    suites: tuple[str, ...]  # extra suites on the mirrors: "updates", "security", "backports"
    gcc: int  # the gcc major it ships as default: the build root for kernels built with it

    def suite_names(self) -> list[str]:
        """The release and its extra suites, as apt names them."""
        return [self.codename, *(f"{self.codename}-{extra}" for extra in self.suites)]


def releases_file() -> Path:
    """`$KLP_HARNESS_RELEASES`, else the repository's kernels/releases/debian.toml."""
    explicit = os.environ.get(ENV_VAR)
    return Path(explicit).expanduser().absolute() if explicit else DEFAULT_FILE


def load_releases(path: Path | None = None) -> tuple[Release, ...]:
    """Every release of `path` (default: `releases_file()`), oldest first; an
    ExpectationError naming the file and the key when the file is not as documented."""
    return _load(path if path is not None else releases_file())


@functools.cache
def _load(path: Path) -> tuple[Release, ...]:
    tables = read_tables(path, "release", "the Debian releases")
    if not tables:
        raise ExpectationError(f"{path}: no [[release]] table")
    out: list[Release] = []
    for i, table in enumerate(tables):
        release = _release(f"{path}: release #{i + 1}", table)
        if any(r.codename == release.codename for r in out):
            raise ExpectationError(f"{path}: release {release.codename!r} listed twice")
        out.append(release)
    return tuple(out)


def _release(where: str, table: object) -> Release:
    if not isinstance(table, dict):
        raise ExpectationError(f"{where}: not a table")
    codename = table.get("codename")
    if not isinstance(codename, str) or not _CODENAME.match(codename):
        raise ExpectationError(f"{where}: 'codename' must be a lower-case word (e.g. \"trixie\")")
    where = f"{where} ({codename})"
    unknown = set(table) - _KEYS
    if unknown:
        raise ExpectationError(f"{where}: unknown keys {sorted(unknown)}")
    version = table.get("version")
    if not isinstance(version, str) or not version:
        raise ExpectationError(f"{where}: 'version' must be a string (e.g. \"13\")")
    suites = table.get("suites")
    if not isinstance(suites, list) or not all(s in EXTRA_SUITES for s in suites):
        raise ExpectationError(
            f"{where}: 'suites' must be a list of {', '.join(map(repr, EXTRA_SUITES))}"
        )
    gcc = table.get("gcc")
    if not isinstance(gcc, int) or isinstance(gcc, bool) or gcc <= 0:
        raise ExpectationError(f"{where}: 'gcc' must be the gcc major it ships (e.g. 14)")
    return Release(codename, version, tuple(dict.fromkeys(suites)), gcc)


def find_release(codename: str) -> Release | None:
    return next((r for r in load_releases() if r.codename == codename), None)


def codenames() -> list[str]:
    return [r.codename for r in load_releases()]


def all_suites() -> list[str]:
    """Every suite the private apt root lists."""
    return [suite for r in load_releases() for suite in r.suite_names()]


def gcc_suites() -> dict[int, str]:
    """gcc major -> the release whose build root ships it (the oldest, when several do)."""
    out: dict[int, str] = {}
    for r in load_releases():
        out.setdefault(r.gcc, r.codename)
    return out
