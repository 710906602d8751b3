"""Debian build roots (made with mmdebstrap) and running commands inside them.

A root is cached under `cache_dir("buildroots")/<suite>`; it is created in a temp dir
and renamed into place with a completion marker, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked, staged_dir
from harness.errors import ToolchainError

# Which Debian suite ships which gcc major as its default compiler (kept as data).
GCC_SUITES: dict[int, str] = {10: "bullseye", 12: "bookworm", 14: "trixie"}

# What a module build needs: compiler, make, libc headers, libelf (objtool),
# bc, kmod, and dwarves (pahole) for module BTF. `gcc` gives a plain HOSTCC.
BASE_PACKAGES: tuple[str, ...] = ("make", "libc6-dev", "libelf-dev", "bc", "kmod", "dwarves")

MARKER = ".klp-harness-complete"
MIRROR_ENV = "KLP_HARNESS_MIRROR"
APT_SOURCES = Path("/etc/apt")
CREATE_TIMEOUT = 1800

# Runs inside a private mount namespace (`unshare --mount`): binds each host path at
# the same path inside the root, mounts /proc (objtool reads it), then chroots and
# returns to the caller's working directory. Mounts vanish with the namespace.
_WRAPPER = r"""
set -e
root=$1; shift
while [ "$1" != -- ]; do
  if [ -d "$1" ]; then mkdir -p "$root$1"
  else mkdir -p "$root$(dirname "$1")"; [ -e "$root$1" ] || : > "$root$1"; fi
  mount --bind "$1" "$root$1"
  shift
done
shift
mount -t proc proc "$root/proc"
cwd=$PWD
exec chroot "$root" /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/sh -c \
  'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' klp-chdir "$cwd" "$@"
"""


def packages_for(suite: str) -> tuple[str, ...]:
    majors = [major for major, name in GCC_SUITES.items() if name == suite]
    if not majors:
        raise ToolchainError(f"no build-root package list for suite {suite!r}")
    return (f"gcc-{majors[0]}", "gcc", *BASE_PACKAGES)


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """`deb` entries of a deb822 .sources file (disabled and deb-src entries skipped)."""
    found: list[AptSource] = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        found += [AptSource(uri, suites) for uri in fields.get("uris", "").split()]
    return found


_ONE_LINE = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb` lines of a classic sources.list."""
    found: list[AptSource] = []
    for line in text.splitlines():
        if m := _ONE_LINE.match(line.split("#", 1)[0].strip()):
            found.append(AptSource(m.group(1), (m.group(2),)))
    return found


def _host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)", text, re.MULTILINE)
    return m.group(1) if m else ""


def pick_mirror(sources: Iterable[AptSource], codename: str) -> str | None:
    """The archive the host installs its own release from: an entry listing the bare
    codename (so not `-security`, not a third-party repository)."""
    for source in sources:
        if codename and codename in source.suites:
            return source.uri.rstrip("/")
    return None


def debian_mirror() -> str:
    """The Debian mirror from `$KLP_HARNESS_MIRROR`, else from the host's apt configuration."""
    explicit = os.environ.get(MIRROR_ENV)
    if explicit:
        return explicit.rstrip("/")
    sources: list[AptSource] = []
    files = [APT_SOURCES / "sources.list", *sorted((APT_SOURCES / "sources.list.d").glob("*"))]
    for path in files:
        try:
            if path.suffix == ".sources":
                sources += parse_deb822_sources(path.read_text())
            elif path.suffix == ".list":
                sources += parse_one_line_sources(path.read_text())
        except OSError:
            continue
    mirror = pick_mirror(sources, _host_codename())
    if mirror is None:
        raise ToolchainError(
            f"cannot find the host's Debian mirror in {APT_SOURCES}/sources.list{{,.d}}; "
            f"set {MIRROR_ENV}"
        )
    return mirror


def buildroot_path(suite: str) -> Path:
    return cache_dir("buildroots") / suite


def _marker_ok(root: Path, packages: Sequence[str]) -> bool:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("packages") == list(packages)


def ensure_buildroot(suite: str) -> Path:
    """The cached root for `suite`, created with mmdebstrap (about 40 s) when missing."""
    packages = packages_for(suite)
    final = buildroot_path(suite)
    if _marker_ok(final, packages):
        return final
    if os.geteuid() != 0:
        raise ToolchainError(f"creating the {suite} build root needs root (mmdebstrap, chroot)")
    if shutil.which("mmdebstrap") is None:
        raise ToolchainError("mmdebstrap is not installed (Debian package mmdebstrap)")
    with locked(final):
        if _marker_ok(final, packages):  # another run made it while we waited
            return final
        _remove_stale(final)
        mirror = debian_mirror()
        print(
            f"klp-harness: creating the {suite} build root with mmdebstrap (about 40 s) in {final}",
            file=sys.stderr,
            flush=True,
        )
        log = final.parent / f"{suite}.log"
        start = time.monotonic()
        with staged_dir(final) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes 0700; this becomes the root's "/"
            _mmdebstrap(suite, tmp, mirror, packages, log)
            marker = {
                "suite": suite,
                "mirror": mirror,
                "packages": list(packages),
                "seconds": round(time.monotonic() - start, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(tmp / MARKER, json.dumps(marker, indent=1) + "\n")
    return final


def _remove_stale(final: Path) -> None:
    # Temp roots of a killed run (staged_dir names them `.<suite>.*`); we hold the lock.
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.is_dir() and not os.path.ismount(stale / "proc"):
            shutil.rmtree(stale, ignore_errors=True)


def _mmdebstrap(suite: str, target: Path, mirror: str, packages: Sequence[str], log: Path) -> None:
    # Its own mount namespace: no /proc or /dev mount of a half-made root outlives it for
    # the cleanup to walk into. pdeathsig + kill-child + own pid namespace: it and all its
    # children die with us, even on SIGKILL.
    argv = [
        "setpriv", "--pdeathsig", "KILL",
        "unshare", "--mount", "--pid", "--fork", "--kill-child",
        "mmdebstrap", "--mode=root", "--variant=apt",
        f"--include={','.join(packages)}",
        "--aptopt=Acquire::Retries \"3\"",
        suite, str(target), mirror,
    ]  # fmt: skip
    with open(log, "w") as out:
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=CREATE_TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"mmdebstrap {suite}: timed out; log in {log}") from None
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ToolchainError(
            f"mmdebstrap {suite} failed (exit {result.returncode}); log in {log}:\n{tail}"
        )


def _makefile_paths(headers: Path) -> list[Path]:
    """Absolute paths a Debian headers Makefile names (`include /...`, `KBUILD_OUTPUT=/...`)."""
    try:
        text = (headers / "Makefile").read_text(errors="replace")
    except OSError:
        return []
    paths = re.findall(r"^(?:include\s+|KBUILD_OUTPUT\s*=\s*)(/\S+)", text, re.MULTILINE)
    return [Path(p).parent if p.endswith("/Makefile") else Path(p) for p in paths]


def expand_binds(binds: Sequence[Path]) -> list[Path]:
    """`binds` plus what a headers tree reaches outside itself: the targets of its
    `scripts`/`tools` links (linux-kbuild) and the common tree its Makefile includes."""
    wanted: list[Path] = []
    for bind in binds:
        bind = bind.absolute()
        wanted.append(bind)
        if bind.is_dir() and (bind / "Makefile").is_file():
            for name in ("scripts", "tools"):
                link = bind / name
                if link.is_symlink():
                    wanted.append(link.resolve())
            wanted += [p for p in _makefile_paths(bind) if p.is_dir()]
    unique: list[Path] = []
    for path in sorted(set(wanted), key=lambda p: (len(p.parts), str(p))):
        if not any(path.is_relative_to(parent) for parent in unique):
            unique.append(path)
    return unique


def wrap(root: Path, argv: Sequence[str], binds: Sequence[Path]) -> list[str]:
    """`argv` run as root inside `root`, with `binds` visible at their host paths."""
    if not argv:
        raise ToolchainError("empty command for the build root")
    mounts = expand_binds(binds)
    for path in mounts:
        if not path.exists():
            raise ToolchainError(f"{path}: cannot bind into the build root: no such path")
    return [
        "unshare", "--mount", "--fork", "--propagation", "private",
        "/bin/sh", "-c", _WRAPPER, "klp-buildroot", str(root),
        *(str(p) for p in mounts), "--", *argv,
    ]  # fmt: skip
