"""Choose KVM or TCG with a real probe, once per process, its verdict kept in the cache.

Opening /dev/kvm is not enough: on some hosts it opens but a KVM guest hangs, or
qemu aborts setting MSRs with `-cpu host` (what virtme-ng asks for under KVM). A
real-mode boot sector is not enough either: it can run under such a KVM while a
Linux kernel hangs. So the probe boots the kernel itself, as virtme-ng would (KVM,
`-cpu host`), with no root device: a working KVM reaches the "VFS: Unable to mount
root" panic within a second or two and `panic=-1` + `-no-reboot` end qemu.

A hanging KVM costs the whole probe timeout, so the verdict is stored in the cache and
reused until /dev/kvm, the qemu binary, the host kernel or the probed image changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, locked
from harness.errors import HarnessError
from harness.fileio import read_regular


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


ACCELS = tuple(Accel)
ENV_VAR = "KLP_HARNESS_ACCEL"  # "kvm" or "tcg" (an Accel): skip the probe
PROBE_TIMEOUT = 12.0
VERDICTS = "kvm-probe.json"  # in cache_dir("accel")
MAX_VERDICTS = 16
KVM_DEVICE = "/dev/kvm"

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved here, not in a forked child


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str  # one line: why, for reports
    seconds: float  # time the probe took


_lock = threading.Lock()
_cached: AccelChoice | None = None


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def _kill_me_when_parent_dies(parent: int) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the harness dies, even by SIGKILL.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits. The runner's
    worker threads live until the run ends and each boots, uses and closes its guest
    itself; the probe blocks its thread until qemu ends. The signal survives execve
    (qemu is exec'd directly by the probe), not fork: vng's own children die through
    the pty hangup instead (see boot.py).
    """
    return functools.partial(_kill_me_when_parent_dies, os.getpid())


def kvm_unusable() -> str | None:
    """Why KVM cannot even be tried (no probe boot needed), or None."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} does not exist"
    try:
        os.close(os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as err:
        return f"{KVM_DEVICE} cannot be opened: {err.strerror}"
    if qemu_binary() is None:
        return "qemu-system-x86_64 not found"
    return None


def _run_probe(cmd: list[str], timeout: float) -> tuple[bytes, bytes, int]:
    """stdout, stderr and status of `cmd`, run in its own session that is killed whole on
    timeout or interruption; PDEATHSIG ends it if the harness dies."""
    with subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # only a prctl: safe beside threads
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return out, err, proc.returncode


def probe_boot(vmlinuz: Path, timeout: float, accel: Accel = Accel.KVM) -> tuple[bool, str]:
    """Whether `vmlinuz` boots to its expected panic under `accel`, and why (one line).
    Accel.TCG runs the same probe without KVM: tests use it to check the probe itself."""
    if accel == Accel.KVM and (why := kvm_unusable()):
        return False, why
    qemu = qemu_binary()
    if qemu is None:
        return False, "qemu-system-x86_64 not found"
    cmd = [
        qemu, "-accel", accel, "-cpu", "host" if accel == Accel.KVM else "max",
        "-machine", "q35", "-m", "256",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", "stdio",  # captured below: no temp file to leave behind
        "-kernel", str(vmlinuz),
        "-append", "console=ttyS0 panic=-1 root=/dev/klp-none quiet loglevel=1",
    ]  # fmt: skip
    try:
        out, err, status = _run_probe(cmd, timeout)
    except subprocess.TimeoutExpired:
        return False, f"a {accel.upper()} guest did not finish a {timeout:.0f} s probe boot (hangs)"
    except OSError as exc:
        return False, f"cannot run {qemu}: {exc.strerror}"
    if b"Kernel panic" in out:
        return True, f"a {accel.upper()} probe boot ran to its expected panic"
    err_lines = err.decode(errors="replace").strip().splitlines()
    why = err_lines[-1] if err_lines else f"exit status {status}, no console output"
    return False, f"a {accel.upper()} probe boot failed: {why}"


def _identity(path: str | Path) -> list[object]:
    """What changes when a file is replaced or rewritten (a device node recreated at boot)."""
    try:
        st = os.stat(path)
    except OSError:
        return [os.fspath(path), None]
    return [os.path.realpath(path), st.st_dev, st.st_ino, st.st_rdev, st.st_size, st.st_mtime_ns]


def verdict_key(vmlinuz: Path, timeout: float) -> str:
    """What the KVM verdict depends on: the device, qemu, the host kernel, the image probed."""
    uname = os.uname()
    parts = {
        "kvm": _identity(KVM_DEVICE),
        "qemu": _identity(qemu_binary() or "qemu-system-x86_64"),
        "host": [uname.release, uname.version],
        "image": _identity(vmlinuz),
        "timeout": timeout,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


Verdict = tuple[Accel, str, float]  # accel, reason, time probed


def _load_verdicts(path: Path) -> dict[str, Verdict]:
    try:
        data = json.loads(read_regular(path, 1 << 20))
    except (HarnessError, ValueError):
        return {}  # none yet, or damaged: probe again and rewrite it
    verdicts: dict[str, Verdict] = {}
    for key, entry in data.items() if isinstance(data, dict) else ():
        if isinstance(entry, dict) and entry.get("accel") in ACCELS:
            reason, when = entry.get("reason"), entry.get("time")
            if isinstance(reason, str) and isinstance(when, int | float):
                verdicts[key] = (Accel(entry["accel"]), reason, float(when))
    return verdicts


def cached_verdict(key: str) -> AccelChoice | None:
    found = _load_verdicts(cache_dir("accel") / VERDICTS).get(key)
    if found is None:
        return None
    accel, reason, when = found
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    return AccelChoice(accel, f"cached verdict from {date}: {reason}", 0.0)


def store_verdict(key: str, choice: AccelChoice) -> None:
    path = cache_dir("accel") / VERDICTS
    with locked(path):
        verdicts = _load_verdicts(path)
        verdicts[key] = (choice.accel, choice.reason, time.time())
        newest = sorted(verdicts.items(), key=lambda item: item[1][2])[-MAX_VERDICTS:]
        data = {k: {"accel": a, "reason": r, "time": t} for k, (a, r, t) in newest}
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def choose_accel(vmlinuz: Path, timeout: float = PROBE_TIMEOUT) -> AccelChoice:
    """KVM if a probe boot of `vmlinuz` works under it, else TCG; kept for the process and,
    for the probe boot's verdict, in the cache.

    `$KLP_HARNESS_ACCEL=kvm|tcg` skips the probe.
    """
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        forced = os.environ.get(ENV_VAR, "").strip().lower()
        start = time.monotonic()
        if forced in ACCELS:
            choice = AccelChoice(Accel(forced), f"${ENV_VAR}={forced}", 0.0)
        elif why := kvm_unusable():
            choice = AccelChoice(Accel.TCG, why, time.monotonic() - start)
        else:
            key = verdict_key(vmlinuz, timeout)
            found = cached_verdict(key)
            if found is None:
                ok, reason = probe_boot(vmlinuz, timeout)
                accel = Accel.KVM if ok else Accel.TCG
                found = AccelChoice(accel, reason, time.monotonic() - start)
                store_verdict(key, found)
            choice = found
        _cached = choice
        return choice


def reset_cache() -> None:
    """For tests: forget the process's choice (the verdicts in the cache dir stay)."""
    global _cached
    with _lock:
        _cached = None
