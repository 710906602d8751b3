"""Nothing the harness starts outlives it: a harness process killed with SIGKILL, during the
KVM probe or with a guest booting or booted, leaves no qemu behind (checked in /proc).

Each case runs the harness's own code in a child python, kills that child with SIGKILL, and
watches the processes it had started. The boots also run with a PATH that lacks the venv's
bin/, so vng must be found beside the interpreter and virtme-run beside vng.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.kernels.kernel import Kernel
from harness.vm import accel

VENV_BIN = os.path.dirname(sys.executable)


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, command line) of every live process."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0], cmdline.strip())
    return table


def _descendants(root: int) -> dict[int, str]:
    table = _processes()
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, cmdline) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline
                todo.append(pid)
    return found


def _survivors(started: dict[int, str], within: float) -> dict[int, str]:
    """Those of `started` still running (same pid, same command line, not a zombie)."""
    deadline = time.monotonic() + within
    while True:
        table = _processes()
        alive = {
            pid: cmd
            for pid, cmd in started.items()
            if pid in table and table[pid][2] == cmd and table[pid][1] != "Z"
        }
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _harness(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _wait_for(child: subprocess.Popen[str], what: str, timeout: float) -> dict[int, str]:
    """The child's process tree once a process whose command line contains `what` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        tree = _descendants(child.pid)
        if any(what in cmd for cmd in tree.values()):
            return tree
        time.sleep(0.1)
    child.kill()
    pytest.fail(f"no {what} started by the harness within {timeout:.0f} s")


def _kill_and_check(child: subprocess.Popen[str], tree: dict[int, str], within: float) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    alive = _survivors(tree, within)
    for pid in alive:  # do not leave them running for the next test
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"alive {within:.0f} s after kill -9 of the harness: {alive}"


def test_die_with_parent_kills_a_child_of_a_killed_harness() -> None:
    code = (
        "import subprocess, time; from harness.vm.accel import die_with_parent;"
        "subprocess.Popen(['sleep', '600'], start_new_session=True, "
        "preexec_fn=die_with_parent()); time.sleep(600)"
    )
    child = _harness(code)
    tree = _wait_for(child, "sleep 600", 30)
    _kill_and_check(child, tree, within=3)


@pytest.mark.vm
@pytest.mark.parametrize("mode", ["tcg-probe", "kvm-probe"])
def test_probe_qemu_dies_with_the_harness(klp_kernel: Kernel, tmp_path: Path, mode: str) -> None:
    if mode == "kvm-probe":
        why = accel.kvm_unusable()
        if why:
            pytest.skip(f"the KVM probe starts no qemu here: {why}")
        # choose_accel itself, with an empty cache so that it really probes.
        code = (
            "import sys; from pathlib import Path; from harness.vm.accel import choose_accel;"
            "choose_accel(Path(sys.argv[1]))"
        )
    else:  # the same probe under TCG: runs on any host with qemu
        code = (
            "import sys; from pathlib import Path; from harness.vm.accel import Accel, probe_boot;"
            "probe_boot(Path(sys.argv[1]), 300, Accel.TCG)"
        )
    env = {**os.environ, "KLP_HARNESS_CACHE": str(tmp_path / "cache")}
    env.pop(accel.ENV_VAR, None)
    old_dirs = set(Path("/tmp").glob("klp-kvm-probe-*"))  # what the old probe left behind
    child = _harness(code, str(klp_kernel.vmlinuz), env=env)
    tree = _wait_for(child, "qemu-system-x86_64", 60)
    time.sleep(0.5)  # qemu is running the guest, not just starting
    # A TCG probe boot ends by itself after about 7 s: a survivor must be seen before.
    _kill_and_check(child, tree, within=3)
    assert set(Path("/tmp").glob("klp-kvm-probe-*")) <= old_dirs


BOOT = """
import sys
from pathlib import Path
from harness.console import Printer
from harness.kernels.acquire import acquire
from harness.vm.boot import boot

guest = boot(acquire(sys.argv[1], printer=Printer(quiet=True)), Path(sys.argv[2]))
print("READY", guest.run("uname -r").output.strip(), flush=True)
sys.stdin.read()
"""


@pytest.mark.vm
@pytest.mark.parametrize("when", ["booting", "booted"])
def test_guest_qemu_dies_with_the_harness(klp_kernel: Kernel, tmp_path: Path, when: str) -> None:
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p != VENV_BIN
    )
    env = {**os.environ, "PATH": path}
    child = subprocess.Popen(
        [sys.executable, "-c", BOOT, klp_kernel.spec, str(tmp_path / "console.log")],
        stdin=subprocess.PIPE,  # never closed: the child waits until killed
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    tree = _wait_for(child, "qemu-system-x86_64", 120)
    if when == "booted":
        assert child.stdout is not None
        line = child.stdout.readline()  # the guest answers a command
        assert line == f"READY {klp_kernel.release}\n", (tmp_path / "console.log").read_text()
        tree = _descendants(child.pid)
    assert os.path.join(VENV_BIN, "vng") in " ".join(tree.values())
    assert any(cmd.startswith("/bin/sh -c virtme-run") for cmd in tree.values())
    _kill_and_check(child, tree, within=10)  # qemu shuts down on the SIGHUP
