"""The guest's root for another architecture (arm64, ...): Debian's static busybox, bash and
kmod of that architecture, unpacked with `mmdebstrap --variant=extract` (no emulation on the
host: nothing of the root runs here), plus the same harness files as the host's root.

virtme-ng boots a foreign architecture with its bash init script (its Rust init is an x86-64
binary), which needs bash and /usr/bin/env; busybox provides the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

from harness.build.buildroot import run_mmdebstrap
from harness.cache import atomic_write_text, cache_dir, locked, staged_dir
from harness.errors import BootError, KernelError
from harness.kernels.arch import Arch
from harness.kernels.mirrors import MIRROR_ENV, debian_mirror
from harness.vm import guestroot

SUITE = "bookworm"
PACKAGES = ("busybox-static", "bash", "kmod")
# Where virtme-ng's init mounts or writes in the root.
EXTRA_DIRS = ("etc/lvm", "var/lib", "usr/local/bin")


def _recipe(arch: Arch) -> str:
    text = repr((SUITE, PACKAGES, EXTRA_DIRS, guestroot.recipe_parts(), arch.debian))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _applets() -> list[str]:
    """Every applet path of the host's busybox (Debian's 1.35 static build on every
    architecture of a release: the same list), else the harness's own list."""
    busybox = shutil.which("busybox")
    if busybox:
        proc = subprocess.run([busybox, "--list-full"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()
    return [f"bin/{a}" for a in guestroot.APPLETS]


def _extract(arch: Arch, target: Path, log: Path) -> None:
    try:
        mirror = debian_mirror()
    except KernelError as err:
        raise BootError(f"{err}; or set {MIRROR_ENV}") from None
    if shutil.which("mmdebstrap") is None:
        raise BootError("mmdebstrap is not installed (Debian package mmdebstrap)")
    options = ["--variant=extract", f"--architectures={arch.debian}"]
    run_mmdebstrap(options, SUITE, target, mirror, PACKAGES, log, error=BootError)


def _populate(root: Path) -> None:
    if not (root / "bin/busybox").is_file() or not (root / "bin/bash").is_file():
        raise BootError(f"{root}: mmdebstrap left no bin/busybox or bin/bash")
    for path in _applets():
        link = root / path.lstrip("/")
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for sub in EXTRA_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    guestroot.add_harness_files(root)


def foreign_root(arch: Arch) -> Path:
    """The cached root for `arch` (made once per recipe, about 5 s and 120 MB)."""
    final = cache_dir("guestroot") / f"{arch.name}-{_recipe(arch)}"
    marker = final / ".complete"
    if not marker.is_file():
        with locked(final):
            if not marker.is_file():
                log = final.parent / f"{final.name}.log"
                start = time.monotonic()
                with staged_dir(final) as tmp:
                    tmp.chmod(0o755)  # the guest's "/"
                    _extract(arch, tmp, log)
                    _populate(tmp)
                    took = time.monotonic() - start
                    atomic_write_text(tmp / ".complete", f"{arch.debian} in {took:.1f} s\n")
    guestroot.sweep_init_scripts(final)
    return final
