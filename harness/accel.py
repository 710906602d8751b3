"""Choose KVM or TCG with a real probe, once per process.

Opening /dev/kvm is not enough: on some hosts it opens but a KVM guest hangs, or
qemu aborts setting MSRs with `-cpu host` (what virtme-ng asks for under KVM). A
real-mode boot sector is not enough either: it can run under such a KVM while a
Linux kernel hangs. So the probe boots the kernel itself, as virtme-ng would (KVM,
`-cpu host`), with no root device: a working KVM reaches the "VFS: Unable to mount
root" panic within a second or two and `panic=-1` + `-no-reboot` end qemu.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "KLP_HARNESS_ACCEL"  # "kvm" or "tcg": skip the probe
PROBE_TIMEOUT = 12.0
ACCELS = ("kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" | "tcg"
    reason: str  # one line: why, for reports
    seconds: float  # time the probe took


_lock = threading.Lock()
_cached: AccelChoice | None = None


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def _probe_kvm(vmlinuz: Path, timeout: float, accel: str = "kvm") -> tuple[bool, str]:
    """`accel="tcg"` runs the same probe without KVM: tests use it to check the probe itself."""
    if accel == "kvm":
        if not os.path.exists("/dev/kvm"):
            return False, "/dev/kvm does not exist"
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        except OSError as err:
            return False, f"/dev/kvm cannot be opened: {err.strerror}"
    qemu = qemu_binary()
    if qemu is None:
        return False, "qemu-system-x86_64 not found"
    with tempfile.TemporaryDirectory(prefix="klp-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        cmd = [
            qemu, "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-machine", "q35", "-m", "256",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{serial}",
            "-kernel", str(vmlinuz),
            "-append", "console=ttyS0 panic=-1 root=/dev/klp-none quiet loglevel=1",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return (
                False,
                f"a {accel.upper()} guest did not finish a {timeout:.0f} s probe boot (hangs)",
            )
        text = serial.read_text(errors="replace") if serial.exists() else ""
    if "Kernel panic" in text:
        return True, f"a {accel.upper()} probe boot ran to its expected panic"
    err_lines = proc.stderr.decode(errors="replace").strip().splitlines()
    why = err_lines[-1] if err_lines else f"exit status {proc.returncode}, no console output"
    return False, f"a {accel.upper()} probe boot failed: {why}"


def choose_accel(vmlinuz: Path, timeout: float = PROBE_TIMEOUT) -> AccelChoice:
    """KVM if a probe boot of `vmlinuz` works under it, else TCG; cached for the process.

    `$KLP_HARNESS_ACCEL=kvm|tcg` skips the probe.
    """
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        forced = os.environ.get(ENV_VAR, "").strip().lower()
        start = time.monotonic()
        if forced in ACCELS:
            choice = AccelChoice(forced, f"${ENV_VAR}={forced}", 0.0)
        else:
            ok, reason = _probe_kvm(vmlinuz, timeout)
            choice = AccelChoice("kvm" if ok else "tcg", reason, time.monotonic() - start)
        _cached = choice
        return choice


def reset_cache() -> None:
    """For tests."""
    global _cached
    with _lock:
        _cached = None
