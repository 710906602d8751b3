"""The host's Debian mirrors, read from its own apt sources (one-line and deb822 formats):
the private apt root and the build roots fetch from the same mirrors as the host."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import KernelError
from harness.kernels.releases import codenames


@dataclass(frozen=True)
class AptSource:
    """One sources entry (a one-line `deb` line or a deb822 stanza)."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    types: tuple[str, ...] = ("deb",)
    signed_by: str = ""
    enabled: bool = True


def parse_one_line(text: str) -> list[AptSource]:
    """`deb [opt=val ...] URI SUITE COMPONENT...` lines of a sources.list."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: dict[str, str] = {}
        if m := re.match(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$", line):
            kind, opts, rest = m.groups()
            for opt in opts.split():
                key, _, val = opt.partition("=")
                options[key.lower()] = val
            words = rest.split()
        else:
            kind, *words = line.split()
        if kind not in ("deb", "deb-src") or len(words) < 2:
            continue
        out.append(
            AptSource(
                uris=(words[0],),
                suites=(words[1],),
                components=tuple(words[2:]),
                types=(kind,),
                signed_by=options.get("signed-by", ""),
            )
        )
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Stanzas of a `.sources` file (Types, URIs, Suites, Components, Signed-By, Enabled)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:  # continuation (an inline keyring block)
                fields[key] += "\n" + raw.strip()
            elif ":" in raw:
                key, _, val = raw.partition(":")
                key = key.strip().lower()
                fields[key] = val.strip()
        if "uris" not in fields or "suites" not in fields:
            continue
        out.append(
            AptSource(
                uris=tuple(fields["uris"].split()),
                suites=tuple(fields["suites"].split()),
                components=tuple(fields.get("components", "").split()),
                types=tuple(fields.get("types", "deb").split()),
                signed_by=fields.get("signed-by", "").split("\n")[0].strip(),
                enabled=fields.get("enabled", "yes").lower() not in ("no", "false", "0"),
            )
        )
    return out


def read_host_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """The host's sources: sources.list, sources.list.d/*.list and *.sources."""
    sources: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        sources += parse_one_line(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                sources += parse_deb822(path.read_text(errors="replace"))
    return [s for s in sources if s.enabled and "deb" in s.types]


@dataclass(frozen=True)
class Mirrors:
    debian: AptSource
    security: AptSource | None


def _release_of(suite: str) -> str:
    return suite.split("-", 1)[0].split("/", 1)[0]


def find_mirrors(sources: Iterable[AptSource], where: str = "/etc/apt") -> Mirrors:
    """The Debian mirror (suites name a Debian release) and the security mirror (`-security`)."""
    debian = security = None
    for src in sources:
        releases = {_release_of(s) for s in src.suites}
        if not releases & set(codenames()):
            continue
        if any(s.endswith("-security") or "/updates" in s for s in src.suites):
            security = security or src
        else:
            debian = debian or src
    if debian is None:
        raise KernelError(
            f"no Debian mirror found in the host apt configuration ({where}/sources.list, "
            f"{where}/sources.list.d): need an entry whose suites name a Debian release"
        )
    return Mirrors(debian, security)


MIRROR_ENV = "KLP_HARNESS_MIRROR"


def debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The main Debian mirror URI (for mmdebstrap): `$KLP_HARNESS_MIRROR`, else the host's."""
    explicit = os.environ.get(MIRROR_ENV)
    if explicit:
        return explicit.rstrip("/")
    return find_mirrors(read_host_sources(etc), str(etc)).debian.uris[0].rstrip("/")
