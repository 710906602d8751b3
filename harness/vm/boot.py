"""Boot a kernel under QEMU with virtme-ng and hand back a console session (`Guest`).

The guest boots on a minimal root made for it (harness.vm.guestroot), never the host's: it
sees the run's shared directory at /klp/share (writable: command output, big files) and the
module builds of the kernel under test at /klp/modules (read-only); `Guest.path()` maps a
host path there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pexpect

from harness import cache
from harness.errors import BootError
from harness.fileio import exclusive_file
from harness.kernels.arch import HOST, find_arch
from harness.kernels.kernel import Kernel
from harness.paths import python_tool
from harness.vm import guestroot
from harness.vm.accel import ACCELS, Accel, AccelChoice, choose_accel, die_with_parent
from harness.vm.commands import CommandResult, GuestDied, GuestTimeout
from harness.vm.foreignroot import foreign_root
from harness.vm.guest import Guest

__all__ = ["CommandResult", "Guest", "GuestDied", "GuestTimeout", "boot", "vng_command"]

BOOT_TIMEOUT = 60.0  # KVM seconds to a shell prompt; TCG multiplies it
TCG_SCALE = 4.0  # TCG boots 6.1 to a shell in ~20 s here, a KVM guest in ~3 s
KERNEL_ARGS = (
    "panic=-1",  # a panic reboots at once, and -no-reboot turns that into qemu exiting
    "printk.devkmsg=on",  # canaries written to /dev/kmsg must never be rate-limited away
)
# virtme-ng passes host paths on the kernel command line and to -fsdev: keep them plain.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9_./+-]+$")


def find_vng() -> str:
    """vng beside the running interpreter (the venv's bin/, which need not be on PATH),
    else on PATH."""
    vng = python_tool("vng")
    if vng is None:
        raise BootError(
            f"vng (virtme-ng) not found beside {sys.executable} nor on PATH (pip install virtme-ng)"
        )
    return vng


def vng_environment(vng: str) -> dict[str, str]:
    """The environment for vng: its own directory first on PATH, because vng starts
    `virtme-run` (installed beside it) through the shell."""
    path = os.environ.get("PATH", os.defpath)
    return {**os.environ, "PATH": os.pathsep.join([os.path.dirname(vng), path])}


def vng_command(
    vmlinuz: Path,
    share_dir: Path,
    accel: Accel,
    cpus: int | None = None,
    *,
    root: Path,
    modules: Path | None = None,
    arch: str = HOST,
) -> list[str]:
    """The virtme-ng command line for one boot on the minimal `root` (harness.vm.guestroot),
    with `share_dir` writable and `modules` read-only (`cpus`: vCPUs, vng's default if None);
    another `arch` is emulated by its QEMU (`vng --arch`)."""
    vng = find_vng()
    vng_arch = find_arch(arch).vng
    cmd = [
        vng, *(["--arch", vng_arch] if vng_arch else []), "--run", str(vmlinuz),
        "--force-9p",  # no virtiofsd wait: 9p is what Debian's generic flavour can mount
        *guestroot.vng_args(root, share_dir, modules),
        "--qemu-opts=-no-reboot",
    ]  # fmt: skip
    for arg in KERNEL_ARGS:
        cmd += ["--append", arg]
    if accel == Accel.TCG:
        cmd.append("--disable-kvm")
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    return cmd


def _find_rootfs(vmlinuz: Path) -> Path | None:
    """The directory virtme-ng takes as the kernel's root: the nearest parent with lib/modules."""
    path = Path(os.path.abspath(vmlinuz)).parent
    while path != path.parent:
        if (path / "lib" / "modules").exists():
            return path
        path = path.parent
    return None


def _ensure_depmod(modules_dir: Path, release: str) -> None:
    """virtme-ng needs modules.dep to put 9p/virtio in its initramfs; .debs do not ship it."""
    if (modules_dir / "modules.dep").exists():
        return
    depmod = shutil.which("depmod") or "/sbin/depmod"
    with cache.locked(modules_dir), tempfile.TemporaryDirectory(prefix="klp-depmod-") as tmp:
        if (modules_dir / "modules.dep").exists():
            return
        for sub in ("lib/modules", "usr/lib/modules"):
            (Path(tmp) / sub).mkdir(parents=True)
            (Path(tmp) / sub / release).symlink_to(modules_dir.resolve())
        proc = subprocess.run(
            [depmod, "-a", "-b", tmp, release], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 or not (modules_dir / "modules.dep").exists():
            raise BootError(f"depmod failed for {modules_dir}: {proc.stderr.strip()[-300:]}")


def bootable_image(kernel: Kernel) -> Path:
    """A vmlinuz path from which virtme-ng finds `kernel.modules_dir`.

    virtme-ng looks for `<root>/lib/modules/<release>` above the image. When the kernel's
    files are not laid out that way, a symlink tree in the cache provides it.
    """
    _ensure_depmod(kernel.modules_dir, kernel.release)
    root = _find_rootfs(kernel.vmlinuz)
    wanted = kernel.modules_dir.resolve()
    if root is not None and (root / "lib/modules" / kernel.release).resolve() == wanted:
        return kernel.vmlinuz
    stage = cache.cache_dir("boot", kernel.name)
    with cache.locked(stage):
        image = stage / "boot" / f"vmlinuz-{kernel.release}"
        mods = stage / "lib" / "modules" / kernel.release
        for link, target in ((image, kernel.vmlinuz.resolve()), (mods, wanted)):
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() and link.resolve() != target:
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(target)
    return image


def new_share_dir(console_log: Path, share_dir: Path | None) -> Path:
    """The guest's writable directory: a new one beside the console log unless given."""
    share = share_dir or console_log.parent / f"{console_log.stem}.files"
    share = Path(os.path.abspath(share))
    if not _PLAIN_PATH.match(str(share)):
        raise BootError(
            f"{share}: the guest's shared directory needs a plain path "
            "(letters, digits, / . _ + -): virtme-ng passes it on the kernel command line"
        )
    try:
        share.mkdir(parents=True, exist_ok=share_dir is not None)
    except FileExistsError:
        raise BootError(f"{share}: exists already; a boot's shared directory is new") from None
    return share


def boot(
    kernel: Kernel,
    console_log: Path,
    *,
    accel: str | None = None,
    timeout_scale: float | None = None,
    share_dir: Path | None = None,
    cpus: int | None = None,
    modules: Path | None = None,
) -> Guest:
    """Boot `kernel`, return a `Guest` at a ready shell; use it as a context manager.

    `accel` None probes KVM (a cached verdict, see harness.vm.accel), else TCG. `timeout_scale`
    multiplies every timeout (default 1 for KVM, TCG_SCALE for TCG). The console log is
    written to `console_log`; command outputs, kallsyms.txt and a final dmesg.txt go to
    `share_dir` (default `<console_log stem>.files` beside it). Raises BootError (GuestDied,
    GuestTimeout) with the console tail when the guest does not come up. `cpus` sets the
    guest's vCPUs: guests booted side by side each get their share of the host's cores (under
    TCG every vCPU is a busy host thread).
    """
    arch = find_arch(kernel.arch)
    if kernel.arch != HOST:
        arch.require_tools()
        choice = AccelChoice(Accel.TCG, f"{arch.name} is emulated", 0.0)
    elif accel is None:
        choice = choose_accel(kernel.vmlinuz)
    elif accel in ACCELS:
        choice = AccelChoice(Accel(accel), "requested by the caller", 0.0)
    else:
        raise BootError(f"unknown accelerator {accel!r} (expected one of {', '.join(ACCELS)})")
    scale = timeout_scale or (1.0 if choice.accel == Accel.KVM else TCG_SCALE)
    if not kernel.vmlinuz.is_file():
        raise BootError(f"{kernel.name}: boot: no kernel image at {kernel.vmlinuz}")
    image = bootable_image(kernel)
    # A new console log per boot (`-2`, `-3`... when the name is taken): never another's.
    console_log, log = exclusive_file(console_log)
    try:
        share = new_share_dir(console_log, share_dir)
        root = guestroot.guest_root() if kernel.arch == HOST else foreign_root(arch)
        cmd = vng_command(
            image, share, choice.accel, cpus, root=root, modules=modules, arch=kernel.arch
        )
    except BaseException:
        log.close()
        raise
    log.write(
        f"# klp-harness: {' '.join(cmd)}\n# accel: {choice.accel} ({choice.reason})\n".encode()
    )
    log.flush()
    try:
        # pexpect makes vng a session leader on a new pty. If the harness dies, even by
        # SIGKILL, the pty master closes: the hangup SIGHUPs vng, and vng's exit SIGHUPs its
        # foreground group, where sh, virtme-run and qemu (which ends on SIGHUP) are.
        # PDEATHSIG kills vng too should the master stay open (inherited by a fork).
        child = pexpect.spawn(
            cmd[0], cmd[1:], cwd="/", echo=False, dimensions=(50, 250), timeout=None,
            env=vng_environment(cmd[0]), preexec_fn=die_with_parent(),
        )  # fmt: skip
    except (pexpect.ExceptionPexpect, OSError) as err:
        log.close()
        raise BootError(f"{kernel.name}: boot: cannot start vng: {err}") from None
    child.logfile_read = log
    guest = Guest(
        child,
        kernel_name=kernel.name,
        accel=choice.accel,
        accel_reason=choice.reason,
        timeout_scale=scale,
        console_log=console_log,
        log_handle=log,
        share_dir=share,
        command_line=cmd,
        modules=modules,
    )
    try:
        guest.wait_ready(BOOT_TIMEOUT * scale)  # checks the shared dir too
    except BaseException:
        guest.close()
        raise
    return guest


def boot_report(guest: Guest) -> str:
    """One line for run reports."""
    return (
        f"{guest.kernel_name}: booted under {guest.accel} ({guest.accel_reason}) "
        f"in {guest.boot_seconds:.1f} s"
    )
