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
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked, staged_dir
from harness.console import Printer
from harness.errors import HarnessError, KernelError, ToolchainError
from harness.kernels.mirrors import MIRROR_ENV, debian_mirror
from harness.kernels.releases import find_release

# What a module build needs: compiler, make, libc headers, libelf (objtool),
# bc, kmod, and dwarves (pahole) for module BTF. `gcc` gives a plain HOSTCC.
BASE_PACKAGES: tuple[str, ...] = ("make", "libc6-dev", "libelf-dev", "bc", "kmod", "dwarves")

MARKER = ".klp-harness-complete"
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
    """What the build root of `suite` installs: its gcc (kernels/releases/debian.toml), the rest."""
    release = find_release(suite)
    if release is None:
        raise ToolchainError(f"no build-root package list for suite {suite!r}")
    return (f"gcc-{release.gcc}", "gcc", *BASE_PACKAGES)


def buildroot_path(suite: str, cross: str = "") -> Path:
    return cache_dir("buildroots") / (f"{suite}-{cross.rstrip('-')}" if cross else suite)


def _marker_ok(root: Path, packages: Sequence[str]) -> bool:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("packages") == list(packages)


def ensure_buildroot(suite: str, *, printer: Printer | None = None, cross: str = "") -> Path:
    """The cached root for `suite`, created with mmdebstrap (about 40 s) when missing; with
    `cross` (a CROSS_COMPILE prefix, "aarch64-linux-gnu-") a root of its own that also holds
    the suite's cross gcc for that triplet (Debian's gcc-<triplet>)."""
    packages = packages_for(suite)
    if cross:
        packages = (*packages, f"gcc-{cross.rstrip('-')}")
    final = buildroot_path(suite, cross)
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
        try:
            mirror = debian_mirror()
        except KernelError as err:
            raise ToolchainError(f"{err}; or set {MIRROR_ENV}") from None
        printer = printer or Printer()
        printer.say(f"creating the {suite} build root with mmdebstrap (about 40 s) in {final}")
        log = final.parent / f"{final.name}.log"
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
    run_mmdebstrap(["--mode=root", "--variant=apt"], suite, target, mirror, packages, log)


def run_mmdebstrap(
    options: Sequence[str],
    suite: str,
    target: Path,
    mirror: str,
    packages: Sequence[str],
    log: Path,
    *,
    error: type[HarnessError] = ToolchainError,
) -> None:
    """mmdebstrap `suite` into `target` with `options` and `packages`, its output in `log`;
    `error` (one line and the log's tail) when it fails or times out."""
    # Its own mount namespace: no /proc or /dev mount of a half-made root outlives it for
    # the cleanup to walk into. pdeathsig + kill-child + own pid namespace: it and all its
    # children die with us, even on SIGKILL.
    argv = [
        "setpriv", "--pdeathsig", "KILL",
        "unshare", "--mount", "--pid", "--fork", "--kill-child",
        "mmdebstrap", *options,
        f"--include={','.join(packages)}",
        "--aptopt=Acquire::Retries \"3\"",
        # The host's mirror may be a dated snapshot: a rolling suite's Release is then past
        # its Valid-Until. Signatures are still checked.
        "--aptopt=Acquire::Check-Valid-Until \"false\"",
        suite, str(target), mirror,
    ]  # fmt: skip
    what = f"mmdebstrap {' '.join(options)} {suite}"
    with open(log, "w") as out:
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=CREATE_TIMEOUT, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise error(f"{what}: timed out; log in {log}") from None
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise error(f"{what} failed (exit {result.returncode}); log in {log}:\n{tail}")


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
