"""Real boots of the default kernel (Debian 6.1) under QEMU through virtme-ng."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.errors import BootError
from harness.kernels.kernel import Kernel
from harness.vm.boot import Guest, GuestDied, GuestTimeout, boot

pytestmark = pytest.mark.vm


def figures(guest: Guest) -> str:
    return f"{guest.kernel_name}: {guest.accel} ({guest.accel_reason}), {guest.boot_seconds:.1f} s"


def test_commands_kernel_log_and_kallsyms(klp_kernel: Kernel, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with boot(klp_kernel, log) as guest:
        print(figures(guest))
        assert guest.accel in ("kvm", "tcg") and guest.alive
        assert 0 < guest.boot_seconds < 300
        assert guest.run("uname -r").output == f"{klp_kernel.release}\n"
        assert [guest.run(cmd).status for cmd in ("true", "false", "exit 3", "kill -9 $$")] == [
            0, 1, 3, 137,
        ]  # fmt: skip
        big = guest.run("seq 1 20000; echo tail >&2")
        assert big.ok and big.output.splitlines() == [*map(str, range(1, 20001)), "tail"]
        assert guest.run("printf 'no newline'").output == "no newline"

        # Kernel messages flooding the console while a command prints (log level raised
        # so they really reach the console): output and status must still be exact.
        noisy = guest.run(
            'dmesg -n 8; (for i in $(seq 1 300); do echo "klp-harness: noise $i" '
            "> /dev/kmsg; done) & for i in $(seq 1 300); do echo out $i; done; wait; "
            "dmesg -n 1; exit 5"
        )
        assert noisy.status == 5
        assert noisy.output.splitlines() == [f"out {i}" for i in range(1, 301)]

        canary = guest.kmsg_canary("step one")
        assert guest.run("echo 'klp-harness: after canary' > /dev/kmsg").ok
        assert guest.dmesg_since(canary) == ["klp-harness: after canary"]
        assert guest.tainted() == 0

        # A logged command: one round trip, its own kernel lines, the taint around it;
        # `exit` and a syntax error end only the command, never the guest's shell.
        logged = guest.run_logged(
            "echo 'klp-harness: logged line' > /dev/kmsg; echo \"out $#\"; exit 4", "unit step"
        )
        assert (logged.result.status, logged.result.output) == (4, "out 0\n")
        assert logged.lines == ["klp-harness: logged line"]
        assert (logged.taint_before, logged.taint_after) == (0, 0)
        assert guest.run_logged("(", "syntax").result.status == 2
        assert guest.run_logged("true", "after").lines == []

        start = time.monotonic()
        kallsyms = guest.kallsyms()
        print(f"kallsyms: {len(kallsyms.splitlines())} lines in {time.monotonic() - start:.1f} s")
        assert guest.kallsyms() is kallsyms  # fetched once
        lines = kallsyms.splitlines()
        clone = [line for line in lines if line.endswith(" T kernel_clone")]
        assert len(clone) == 1 and not clone[0].startswith("0000")
        if klp_kernel.kallsyms.is_file():
            # The table recovered offline from vmlinuz: same names, same order, one KASLR shift.
            offline = klp_kernel.kallsyms.read_text().splitlines()
            vmlinux = [line for line in lines if "[" not in line]
            assert [x.split()[2] for x in offline] == [x.split()[2] for x in vmlinux]
            shifts = {
                int(g.split()[0], 16) - int(o.split()[0], 16)
                for g, o in zip(vmlinux, offline, strict=True)
                if o.split()[1] in "Tt"
            }
            assert len(shifts) == 1
    assert not guest.alive
    assert (tmp_path / "console.files" / "dmesg.txt").stat().st_size > 0
    text = log.read_text(errors="replace")
    # the boot's shared-dir check is part of its set-up line: the first command is [1]
    assert "# klp-harness: [1] uname -r" in text and "kernel_clone" not in text


def test_hung_command_times_out_and_stops_the_guest(klp_kernel: Kernel, tmp_path: Path) -> None:
    with boot(klp_kernel, tmp_path / "console.log") as guest:
        start = time.monotonic()
        with pytest.raises(GuestTimeout, match=r"command: no answer to 'sleep 600' within"):
            guest.run("sleep 600", timeout=2)
        assert time.monotonic() - start < 2 * guest.timeout_scale + 10
        assert not guest.alive
        with pytest.raises(GuestDied, match="guest is not running"):
            guest.run("true")


def test_panic_is_a_prompt_boot_error_with_the_tail(klp_kernel: Kernel, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with boot(klp_kernel, log) as guest:
        print(figures(guest))
        start = time.monotonic()
        with pytest.raises(BootError) as caught:
            guest.run("echo c > /proc/sysrq-trigger", timeout=120)
        seconds = time.monotonic() - start
        print(f"panic reported after {seconds:.1f} s")
    assert isinstance(caught.value, GuestDied)
    message = str(caught.value)
    assert message.startswith(f"{klp_kernel.name} ({guest.accel}): command: the guest ended")
    assert "after: Kernel panic - not syncing: sysrq triggered crash" in message
    assert "--- last console lines" in message and "sysrq: Trigger a crash" in message
    assert seconds < 30  # panic=-1 and -no-reboot end qemu; no command timeout involved
