"""A private apt root under the cache: the host's Debian mirror, every kernel suite, and
nothing of the system's apt state touched (own sources, lists, archives, status, pins).
Each Debian architecture has its own root (`apt` for amd64, `apt-arm64`, ...): apt then reads
and fetches that architecture only, and the amd64 root stays what it always was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, hold_dir, locked, sweep_owned, tree_size
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.mirrors import AptSource, Mirrors, find_mirrors, read_host_sources
from harness.kernels.releases import all_suites

HOST_DEBIAN_ARCH = "amd64"  # the root named plain `apt`
LISTS_MAX_AGE = 24 * 3600
PROGRESS_SECONDS = 0.5  # how often a download's progress is looked at
DOWNLOAD_DIR = r"\.dl\.[a-z0-9_]{8}"  # apt-get download's temp dirs (mkdtemp's 8 characters)


_PARTIAL = (
    "E: Some index files failed to download. They have been ignored, or old ones used instead."
)


def judge_update(output: str, returncode: int) -> tuple[list[str], str]:
    """(indexes apt could not fetch, the error that fails the update or ""). A mirror caught
    mid-sync fails some indexes of some suites and apt keeps the old ones: a kernel of the
    other suites still resolves, one of those is then "not found"; anything else fails."""
    errors = [ln for ln in output.splitlines() if ln.startswith(("E:", "Err:"))]
    failed = [ln.split(None, 1)[-1] for ln in errors if ln.startswith("Err:")]
    fatal = [ln for ln in errors if ln.startswith("E:") and ln != _PARTIAL]
    if failed and all(ln.startswith("E: Failed to fetch ") for ln in fatal):
        return failed, ""
    if returncode != 0 or errors:
        return failed, errors[-1] if errors else output.strip()[-300:]
    return [], ""


def pdeathsig() -> list[str]:
    """An argv prefix that kills the child when the harness dies, even by SIGKILL (its own
    children, tar under dpkg-deb, finish within seconds; the next sweep takes what they left)."""
    return ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


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
    arch: str = HOST_DEBIAN_ARCH  # Debian's name of the architecture whose lists apt reads
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
        # Created once, never touched again: apt rebuilds its 100 MB binary cache (seconds)
        # whenever one of these is newer than it.
        for path in (etc / "sources.list", etc / "preferences", self.root / "state/status"):
            if not path.exists():
                path.touch()  # the status empty: nothing installed
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
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
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

    def update(self, *, printer: Printer | None = None) -> None:
        (printer or Printer()).say("updating the private apt lists")
        proc = subprocess.run(
            ["apt-get", *self.options(), "-q", "update"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        self.updated = True
        failed, fatal = judge_update(proc.stdout + "\n" + proc.stderr, proc.returncode)
        if fatal:
            raise KernelError(f"apt-get update of the private root {self.root} failed: {fatal}")
        if failed:
            (printer or Printer()).warn(
                f"apt-get update of {self.root}: {len(failed)} index(es) not fetched "
                f"({'; '.join(failed[:3])}): the mirror may be syncing"
            )
        (self.lists / ".stamp").touch()

    def ensure_fresh(self, *, printer: Printer | None = None) -> None:
        """Update when the lists are missing or older than a day; stale lists beat none."""
        printer = printer or Printer()
        age = self.lists_age()
        if age is not None and age <= LISTS_MAX_AGE:
            return
        try:
            self.update(printer=printer)
        except KernelError as err:
            if age is None:
                raise
            printer.warn(f"{err}; using lists {age / 3600:.0f} h old")

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

    def download(
        self,
        wanted: list[tuple[str, str]],
        dest: Path,
        *,
        printer: Printer | None = None,
        size: int = 0,
    ) -> None:
        """`apt-get download name=version...` into `dest`, through a temp dir (no partial .deb);
        with the expected `size` in bytes, its progress goes to `printer`.

        The caller holds the lists lock, which serialises downloads: the temp dirs of killed
        runs (their flock is free) are swept first."""
        printer = printer or Printer()
        dest.mkdir(parents=True, exist_ok=True)
        for path, swept in sweep_owned(dest, DOWNLOAD_DIR):
            printer.warn(f"removed {path} ({swept >> 20} MiB), left by a killed run")
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".dl."))
        owner = hold_dir(tmp)
        try:
            argv = [*pdeathsig(), "apt-get", *self.options(), "-q", "download"]
            proc = subprocess.Popen(
                [*argv, *(f"{n}={v}" for n, v in wanted)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                out, err = _wait_downloading(proc, tmp, size, printer)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.returncode != 0:
                lines = [ln for ln in f"{out}\n{err}".splitlines() if ln.startswith(("E:", "Err:"))]
                raise KernelError(
                    "download failed: "
                    + (lines[-1] if lines else f"apt-get download exited {proc.returncode}")
                )
            for deb in tmp.glob("*.deb"):
                shutil.move(str(deb), dest / deb.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(owner)


def _wait_downloading(
    proc: subprocess.Popen[str], tmp: Path, size: int, printer: Printer
) -> tuple[str, str]:
    """apt-get's (stdout, stderr) when it ends; meanwhile the bytes in `tmp` against `size`
    (a bar on a terminal, a few lines in a log)."""
    done = 0
    while True:
        try:
            out, err = proc.communicate(timeout=PROGRESS_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if size:
                done = min(tree_size(tmp), size)
                printer.progress("downloading", done, size)
    if size and proc.returncode == 0 and done < size:
        printer.progress("downloading", size, size)
    return out, err


def root_dir(arch: str = HOST_DEBIAN_ARCH) -> Path:
    """Where the private apt root of Debian architecture `arch` lives in the cache."""
    return cache_dir("apt" if arch == HOST_DEBIAN_ARCH else f"apt-{arch}")


def private_root(arch: str = HOST_DEBIAN_ARCH) -> AptRoot:
    """The private apt root of Debian architecture `arch` under the cache, set up (its lists
    as they are)."""
    apt = AptRoot(root_dir(arch), find_mirrors(read_host_sources()), arch)
    with locked(apt.root / "lists"):
        apt.setup()
    return apt


def apt_root(*, printer: Printer | None = None, arch: str = HOST_DEBIAN_ARCH) -> AptRoot:
    """The private apt root, set up and with fresh lists (for look-ups beyond acquire)."""
    apt = private_root(arch)
    with locked(apt.root / "lists"):
        apt.ensure_fresh(printer=printer)
    return apt
