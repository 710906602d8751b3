"""The guest's root: a minimal busybox tree made for it, never the host's root.

virtme-ng exports the host's root to the guest by default; code under test runs as root
in the guest and could read any host file (keys, tokens) and copy it into the results.
With `--root` the guest sees only this tree, the run's shared directory and the module
builds of the kernel under test, each at a fixed guest path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked, staged_dir
from harness.errors import BootError

GUEST_SHARE = "/klp/share"  # the run's writable directory
GUEST_MODULES = "/klp/modules"  # the module builds of the kernel under test, read-only
SHELL = "/bin/klp-shell"
FUNCTIONS = "klp-functions.sh"  # shell functions the guest's shell sources at boot

# What the harness, the samples' checks and virtme-ng's init run in the guest (init needs
# sh, mount and su; `ip` only quiets its loopback set-up).
APPLETS = (
    "sh", "mount", "umount", "insmod", "rmmod", "lsmod", "modprobe", "modinfo", "dmesg", "cat",
    "echo", "ln", "mkdir", "mkfifo", "mknod", "truncate", "rm", "seq", "printf", "ls", "sleep",
    "poweroff", "reboot", "grep", "egrep", "awk", "sed", "stty", "tr", "head", "tail", "wc",
    "cp", "mv", "chmod", "id", "uname", "test", "[", "env", "sync", "kill", "ps", "su", "ip",
    "true", "false", "tee", "cut", "sort", "uniq", "xargs", "find", "dd", "od", "hexdump",
    "stat", "readlink", "basename", "dirname", "date", "expr", "timeout",
)  # fmt: skip
DIRS = (
    "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var/log", "var/tmp",
    "var/cache", "lib/modules", "usr/bin", "usr/sbin", "mnt", "klp/share", "klp/modules",
)  # fmt: skip
# virtme-ng-init bind-mounts generated files over these: they must exist.
EMPTY_FILES = ("etc/fstab", "etc/shadow", "etc/hosts")
# virtme-ng-init starts the shell on a console opened O_NONBLOCK, which busybox ash reads
# as end of input once `stty -echo` turns its line editing off: reopen the terminal.
KLP_SHELL = "#!/bin/sh\nexec /bin/sh -i </proc/self/fd/0 >/proc/self/fd/1 2>/proc/self/fd/2\n"
STALE_INIT = 3600.0  # seconds: vng's init script left by a killed boot


def _busybox() -> Path:
    found = shutil.which("busybox") or "/bin/busybox"
    path = Path(found)
    if not path.is_file():
        raise BootError("busybox not found: install busybox-static (ci/setup.sh does)")
    return path


def recipe_parts() -> tuple[object, ...]:
    """What the harness puts in every root (a change makes new roots)."""
    return (APPLETS, DIRS, EMPTY_FILES, KLP_SHELL)


def _recipe(busybox: Path) -> str:
    """What the tree is made of: a new busybox or a new recipe makes a new tree."""
    digest = hashlib.sha256(busybox.read_bytes())
    digest.update(repr(recipe_parts()).encode())
    return digest.hexdigest()[:16]


def _populate(root: Path, busybox: Path) -> None:
    for sub in DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    add_harness_files(root)


def add_harness_files(root: Path) -> None:
    """The directories, accounts and shell the harness and virtme-ng's init need."""
    for sub in DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ntty:x:5:\n")
    for name in EMPTY_FILES:
        (root / name).write_text("")
    shell = root / SHELL.lstrip("/")
    shell.write_text(KLP_SHELL)
    shell.chmod(0o755)
    (root / "root").chmod(0o700)


def sweep_init_scripts(root: Path) -> None:
    """vng writes its init script into the root and removes it at exit; a killed vng
    leaves it. Old ones go (a boot reads its own within seconds)."""
    now = time.time()
    for script in root.glob("virtme-init-*"):
        try:
            if now - script.lstat().st_mtime > STALE_INIT:
                script.unlink()
        except OSError:
            continue


def guest_root() -> Path:
    """The cached minimal root (made once per busybox and recipe, about 2 MB)."""
    busybox = _busybox()
    final = cache_dir("guestroot") / _recipe(busybox)
    marker = final / ".complete"
    if not marker.is_file():
        with locked(final):
            if not marker.is_file():
                with staged_dir(final) as tmp:
                    _populate(tmp, busybox)
                    atomic_write_text(tmp / ".complete", f"busybox {busybox}\n")
    sweep_init_scripts(final)
    return final


def vng_args(root: Path, share: Path, modules: Path | None) -> list[str]:
    """virtme-ng options that boot on `root` with the shared dir and the builds mounted."""
    args = ["--root", str(root), "--rwdir", f"{GUEST_SHARE}={share}", "--shell", SHELL]
    if modules is not None:
        args += ["--rodir", f"{GUEST_MODULES}={modules}"]
    return args


def guest_path(path: Path, modules: Path | None) -> str:
    """Where the guest sees host file `path` (under the exposed builds dir)."""
    if modules is not None:
        real, top = os.path.realpath(path), os.path.realpath(modules)
        if real.startswith(top + os.sep):
            return GUEST_MODULES + real[len(top) :]
    raise BootError(f"{path}: not visible in the guest (only {modules} is exposed)")


# Prints every line from the first one ending in canary `c` on (none if it is absent).
_AWK_SINCE = "f || substr($0, length($0) - length(c) + 1) == c { f = 1; print }"


def guest_functions(token: str) -> str:
    """Shell functions the guest's shell sources once at boot.

    `klp_logged STEM SEQ CANARY` runs STEM.sh with sh (its own $0 and $$, as checks expect)
    between two /dev/kmsg canaries. Then one awk keeps the kernel lines from the first line
    ending in the canary on (filtering in the guest: writing the whole dmesg to the 9p dir
    costs more) and appends the taint after as the last line of STEM.dmesg; STEM.rc gets
    "status taint-before", written last. (The shell's `read` cannot read the taint: it
    reads a byte at a time, and a sysctl file gives nothing at a non-zero offset.)
    """
    return f"""klp_logged() {{
\tklp_t0=$(cat /proc/sys/kernel/tainted)
\techo "$3" >>/dev/kmsg
\tsh "$1.sh" >"$1.out" 2>&1 </dev/null
\tklp_r=$?
\techo "$3 end" >>/dev/kmsg
\tdmesg | awk -v c="$3" '{_AWK_SINCE}' - /proc/sys/kernel/tainted >"$1.dmesg"
\techo "$klp_r $klp_t0" >"$1.rc"
\tprintf '%s:%s:%s\\n' {token} "$2" "$klp_r"
}}
"""
