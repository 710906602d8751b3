"""A private apt root under the cache: the host's Debian mirror, every kernel suite, and
nothing of the system's apt state touched (own sources, lists, archives, status, pins)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache import atomic_write_text, hold_dir, sweep_owned
from harness.errors import KernelError
from harness.kernels.spec import RELEASES, all_suites

LISTS_MAX_AGE = 24 * 3600
DOWNLOAD_DIR = r"\.dl\.[a-z0-9_]{8}"  # apt-get download's temp dirs (mkdtemp's 8 characters)


def pdeathsig() -> list[str]:
    """An argv prefix that kills the child when the harness dies, even by SIGKILL (its own
    children, tar under dpkg-deb, finish within seconds; the next sweep takes what they left)."""
    return ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


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
        if not releases & set(RELEASES):
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


def private_sources(mirrors: Mirrors) -> str:
    """A deb822 sources file with every kernel suite, on the host's own mirrors."""

    def stanza(src: AptSource, suites: list[str]) -> str:
        lines = [
            "Types: deb",
            f"URIs: {src.uris[0]}",
            f"Suites: {' '.join(suites)}",
            "Components: main",
        ]
        if src.signed_by:
            lines.append(f"Signed-By: {src.signed_by}")
        return "\n".join(lines) + "\n"

    suites = all_suites()
    out = [stanza(mirrors.debian, [s for s in suites if not s.endswith("-security")])]
    if mirrors.security is not None:
        out.append(stanza(mirrors.security, [s for s in suites if s.endswith("-security")]))
    return "\n".join(out)


def preferences_text(priorities: dict[str, int]) -> str:
    """Pin the given suites (by codename) and pin every other suite away."""
    blocks = [
        f"Package: *\nPin: release n={suite}\nPin-Priority: {prio}\n"
        for suite, prio in priorities.items()
    ]
    blocks += [
        f"Package: *\nPin: release n={suite}\nPin-Priority: -1\n"
        for suite in all_suites()
        if suite not in priorities
    ]
    return "\n".join(blocks)


def parse_control(text: str) -> list[dict[str, str]]:
    """RFC 822 paragraphs as printed by `apt-cache show`."""
    records = []
    for para in re.split(r"\n\s*\n", text.strip()):
        rec: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                rec[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, val = line.partition(":")
                rec[key] = val.strip()
        if rec:
            records.append(rec)
    return records


@dataclass(frozen=True)
class Dep:
    name: str
    op: str = ""
    version: str = ""


_DEP = re.compile(r"^([a-z0-9][a-z0-9+.-]*)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?")


def parse_depends(value: str) -> list[Dep]:
    """The first alternative of each `Depends` clause (`a (>= 1) | b` -> a)."""
    deps = []
    for clause in value.split(","):
        first = clause.split("|")[0].strip()
        if m := _DEP.match(first):
            deps.append(Dep(m.group(1), m.group(2) or "", m.group(3) or ""))
    return deps


@dataclass
class AptRoot:
    """`apt-get`/`apt-cache` on a private root; `pins` names a preferences file for policy."""

    root: Path
    mirrors: Mirrors
    updated: bool = field(default=False)  # an update ran in this process

    @property
    def lists(self) -> Path:
        return self.root / "state" / "lists"

    def setup(self) -> None:
        for sub in (
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "pins",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        etc = self.root / "etc"
        want = private_sources(self.mirrors)
        src = etc / "sources.list.d" / "kernels.sources"
        if not src.is_file() or src.read_text() != want:
            atomic_write_text(src, want)
            (self.lists / ".stamp").unlink(missing_ok=True)  # new sources: lists are stale
        for name in ("sources.list", "preferences"):
            (etc / name).touch()
        (self.root / "state" / "status").touch()  # an empty dpkg status: nothing installed
        # The host's hooks (appstream, packagekit) must not run for our updates.
        conf = etc / "apt.conf"
        hooks = (
            "#clear APT::Update::Post-Invoke-Success;\n"
            "#clear APT::Update::Post-Invoke;\n#clear DPkg::Post-Invoke;\n"
        )
        if not conf.is_file() or conf.read_text() != hooks:
            atomic_write_text(conf, hooks)

    def options(self, pins: dict[str, int] | None = None) -> list[str]:
        r = self.root
        prefs = r / "etc" / "preferences"
        if pins:
            key = "_".join(f"{s}-{p}" for s, p in sorted(pins.items()))
            prefs = r / "pins" / f"{key}.pref"
            text = preferences_text(pins)
            if not prefs.is_file() or prefs.read_text() != text:
                atomic_write_text(prefs, text)
        opts = {
            "Dir::Etc::SourceList": r / "etc" / "sources.list",
            "Dir::Etc::SourceParts": r / "etc" / "sources.list.d",
            "Dir::Etc::Preferences": prefs,
            "Dir::Etc::PreferencesParts": r / "etc" / "preferences.d",
            "Dir::State": r / "state",
            "Dir::State::status": r / "state" / "status",
            "Dir::Cache": r / "cache",
            # the host may disable the binary cache (docker images do): each call would then
            # re-parse every list, seconds per query; the source cache would double its 100 MB
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", ""),
        }
        out = ["-c", str(r / "etc" / "apt.conf"), "-o", "Dir::Cache::srcpkgcache="]
        for key, val in opts.items():
            if val != "":
                out += ["-o", f"{key}={val}"]
        return out

    def lists_age(self) -> float | None:
        stamp = self.lists / ".stamp"
        return time.time() - stamp.stat().st_mtime if stamp.is_file() else None

    def update(self, quiet: bool = False) -> None:
        if not quiet:
            print("klp-harness: updating the private apt lists", file=sys.stderr)
        proc = subprocess.run(
            ["apt-get", *self.options(), "-q", "update"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        self.updated = True
        errors = [
            ln
            for ln in proc.stdout.splitlines() + proc.stderr.splitlines()
            if ln.startswith(("E:", "Err:"))
        ]
        if proc.returncode != 0 or errors:
            raise KernelError(
                f"apt-get update of the private root {self.root} failed: "
                + (errors[-1] if errors else proc.stderr.strip()[-300:])
            )
        (self.lists / ".stamp").touch()

    def ensure_fresh(self, quiet: bool = False) -> None:
        """Update when the lists are missing or older than a day; stale lists beat none."""
        age = self.lists_age()
        if age is not None and age <= LISTS_MAX_AGE:
            return
        try:
            self.update(quiet)
        except KernelError as err:
            if age is None:
                raise
            print(
                f"klp-harness: warning: {err}; using lists {age / 3600:.0f} h old", file=sys.stderr
            )

    def show(self, package: str, pins: dict[str, int] | None = None) -> dict[str, str] | None:
        """The control record of `package` (`name` = apt's candidate, `name=version` exact)."""
        proc = subprocess.run(
            ["apt-cache", *self.options(pins), "show", "--no-all-versions", package],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            if "No packages found" in proc.stderr or "Unable to locate" in proc.stderr:
                return None
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise KernelError(f"apt-cache show {package} in {self.root} failed: {last}")
        records = parse_control(proc.stdout)
        return records[0] if records else None

    def download(self, wanted: list[tuple[str, str]], dest: Path, quiet: bool = False) -> None:
        """`apt-get download name=version...` into `dest`, through a temp dir (no partial .deb).

        The caller holds the lists lock, which serialises downloads: the temp dirs of killed
        runs (their flock is free) are swept first."""
        dest.mkdir(parents=True, exist_ok=True)
        for path, size in sweep_owned(dest, DOWNLOAD_DIR):
            print(f"klp-harness: removed {path} ({size >> 20} MiB), left by a killed run",
                  file=sys.stderr)  # fmt: skip
        tty = sys.stderr.isatty() and not quiet
        tmp = tempfile.mkdtemp(dir=dest, prefix=".dl.")
        owner = hold_dir(Path(tmp))
        try:
            proc = subprocess.run(
                [
                    *pdeathsig(),
                    "apt-get",
                    *self.options(),
                    *([] if tty else ["-q"]),
                    "download",
                    *(f"{n}={v}" for n, v in wanted),
                ],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                text=True,
                stdout=sys.stderr if tty else subprocess.PIPE,
                stderr=None if tty else subprocess.PIPE,
            )
            if proc.returncode != 0:
                lines = [
                    ln
                    for ln in f"{proc.stdout or ''}\n{proc.stderr or ''}".splitlines()
                    if ln.startswith(("E:", "Err:"))
                ]
                raise KernelError(
                    "download failed: "
                    + (lines[-1] if lines else f"apt-get download exited {proc.returncode}")
                )
            for deb in Path(tmp).glob("*.deb"):
                shutil.move(str(deb), dest / deb.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(owner)


def deb_filename(name: str, version: str, arch: str) -> str:
    """The file name `apt-get download` gives a package (the epoch colon is escaped)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
