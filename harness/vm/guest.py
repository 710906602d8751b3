"""A booted guest's console session: commands, their output and exit status, kernel-log helpers.

The console only carries short control lines and end markers; every command's output goes
to a file in a directory shared read-write with the host (virtme-ng `--rwdir`), so kernel
messages interleaving on the console can never corrupt it, and big outputs (kallsyms) cost
a 9p write instead of a slow serial transfer under TCG. The guest can write there too, so
the host handles that directory as hostile (harness.vm.sharedir).

A logged command (a suite step's) is one console line each way: shell functions sourced at
boot run it, bracket it with /dev/kmsg canaries, keep only the kernel lines from its canary
on and read the taint around it, all in the guest. Under TCG every guest process costs
milliseconds and every 9p write a round trip, so the protocol spends as few as it can.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, NoReturn

import pexpect

from harness.errors import BootError, FileReadError
from harness.vm import dmesg
from harness.vm.accel import Accel
from harness.vm.commands import (
    CommandResult,
    GuestDied,
    GuestError,
    GuestFileError,
    GuestTimeout,
    LoggedResult,
)
from harness.vm.consolelog import console_tail
from harness.vm.guestroot import FUNCTIONS, GUEST_SHARE, guest_functions, guest_path
from harness.vm.sharedir import SharedDir

OUTPUT_LIMIT = 16 << 20  # a command's output, a dmesg dump: far above a 1 MiB log buffer
KALLSYMS_LIMIT = 256 << 20  # /proc/kallsyms of a big config is tens of MiB
SHARE_CHECK = "shared-dir-check"  # the guest writes "ok" here at boot
# What the guest was doing when an error came: booting, running a command, or (the shared
# dir) the host found a file there that the guest should not have made.
Phase = Literal["boot", "command", "shared dir"]


class Guest:
    """One running guest. Use as a context manager; `close()` powers it off."""

    def __init__(
        self,
        child: pexpect.spawn,
        *,
        kernel_name: str,
        accel: Accel,
        accel_reason: str,
        timeout_scale: float,
        console_log: Path,
        log_handle: IO[bytes],
        share_dir: Path,
        command_line: list[str],
        modules: Path | None = None,
    ) -> None:
        self._child = child
        # pexpect sleeps 50 ms before every send by default (for password prompts): a
        # fixed delay per command that our marker protocol does not need.
        child.delaybeforesend = None
        # and 100 ms at close before it looks whether qemu is gone: it is (EOF seen), or
        # close(force=True) stops it anyway.
        child.delayafterclose = 0.0
        self.kernel_name = kernel_name
        self.accel = accel
        self.accel_reason = accel_reason
        self.timeout_scale = timeout_scale
        self.console_log = console_log
        self._log = log_handle
        self.share_dir = share_dir  # on the host; the guest sees it at GUEST_SHARE
        self.modules = modules  # host dir of module builds the guest sees at GUEST_MODULES
        self.command_line = command_line
        self.boot_seconds = 0.0
        self._token = "KLPH" + secrets.token_hex(6)
        self._seq = 0
        self._dead = False
        self._closed = False
        self._kallsyms: str | None = None
        self._started = time.monotonic()
        self._share = SharedDir(share_dir)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self._dead and not self._closed and bool(self._child.isalive())

    def __enter__(self) -> Guest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> None:
        """Wait for the shell, then make it quiet and machine-readable, and check the shared
        dir both ways (the guest sources a file the host wrote and writes one back). Sets
        `boot_seconds`."""
        deadline = self._started + timeout
        self._expect(r"[#$] ", max(1.0, deadline - time.monotonic()), "boot", "no shell prompt")
        try:
            self._share.create(FUNCTIONS, guest_functions(self._token).encode())
        except FileReadError as err:
            self._fail_hostile(f"cannot write the shell functions: {err}")
        setup = (
            f"stty -echo; PS1=''; PS2=''; cd {GUEST_SHARE} && . ./{FUNCTIONS} && "
            f"echo ok > {SHARE_CHECK}; dmesg -n 1; echo 0 > /proc/sys/kernel/kptr_restrict; "
            f"printf '%s:%s\\n' {self._token} ready"
        )
        # The line may reach the shell before it reads its terminal; resend until answered.
        while True:
            self._child.sendline(setup)
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail_timeout("boot", "the shell did not answer its set-up line")
            try:
                self._expect(
                    rf"{self._token}:ready\r*\n",
                    min(left, 15.0),
                    "boot",
                    "no set-up answer",
                    retry=True,
                )
                break
            except _Retry:
                continue
        try:
            check = self._share.read_status(SHARE_CHECK)
        except FileReadError as err:
            self._fail_hostile(str(err))
        if check != "ok":
            raise BootError(
                self._message("boot", f"the shared dir {self.share_dir} is not writable")
            )
        self.boot_seconds = time.monotonic() - self._started

    def close(self) -> None:
        """Save the guest's whole dmesg beside the console log, power off, reap qemu."""
        if self._closed:
            return
        try:
            if self.alive:
                with contextlib.suppress(BootError):
                    self.run("dmesg > dmesg.txt", timeout=20)
                if self.alive:
                    # Not poweroff: without ACPI (the trimmed source configs) the kernel
                    # halts and qemu stays; a reset ends qemu on any kernel (vng passes
                    # -no-reboot).
                    self._child.sendline("reboot -f")
                    self._child.expect(
                        [pexpect.EOF, pexpect.TIMEOUT], timeout=30 * self.timeout_scale
                    )
        finally:
            self._closed = True
            self._child.close(force=True)
            for path, kind in self._share.close():
                self._note(f"removed {kind} {path} that the guest left in the shared dir")
            self._log.close()

    def kill(self) -> None:
        """Stop qemu at once: no power-off, no dmesg saved (`close` still cleans up)."""
        self._dead = True
        self._child.close(force=True)

    # -- commands --------------------------------------------------------------------------

    def path(self, host_path: Path) -> str:
        """The guest's path of a host file under the exposed module builds."""
        return guest_path(host_path, self.modules)

    def run(self, cmd: str, timeout: float = 60, note: str | None = None) -> CommandResult:
        """Run `cmd` with /bin/sh in the guest (cwd: the shared dir, stdin /dev/null).

        `timeout` is in KVM seconds; it is multiplied by `timeout_scale`. A timeout or a dead
        guest raises GuestTimeout / GuestDied, and the guest is no longer usable.
        """
        if not self.alive:
            raise self._error(GuestDied, "command", f"guest is not running for {cmd!r}")
        self._seq += 1
        stem = self._share.stem(self._seq)
        try:
            self._share.create(f"{stem}.sh", (cmd + "\n").encode())
        except FileReadError as err:
            self._fail_hostile(f"cannot write the command script: {err}")
        line = (
            f"sh {stem}.sh >{stem}.out 2>&1 </dev/null; r=$?; echo $r >{stem}.rc; "
            f"printf '%s:%s:%s\\n' {self._token} {self._seq} $r"
        )
        self._note(f"[{self._seq}] {note or cmd}")
        start = time.monotonic()
        self._child.sendline(line)
        status = self._wait_status(
            stem, timeout * self.timeout_scale, f"no answer to {note or cmd!r}"
        )
        seconds = time.monotonic() - start
        output = self.read_file(f"{stem}.out").decode(errors="replace")
        return CommandResult(cmd, output, status, seconds)

    def read_file(self, name: str, limit: int = OUTPUT_LIMIT) -> bytes:
        """A file the guest wrote in the shared dir: regular, not a link, at most `limit`
        bytes; anything else stops the guest with GuestFileError."""
        try:
            return self._share.read(name, limit)
        except FileReadError as err:
            self._fail_hostile(str(err))

    def checked(self, cmd: str, timeout: float = 60) -> str:
        """`run` that treats a non-zero status as a broken guest; for the helpers below."""
        result = self.run(cmd, timeout)
        if not result.ok:
            raise BootError(
                self._message(
                    "command",
                    f"{cmd!r} exited {result.status}: {result.output.strip()[-500:]}",
                )
            )
        return result.output

    # -- kernel-side helpers ---------------------------------------------------------------

    def run_logged(self, cmd: str, label: str, timeout: float = 60) -> LoggedResult:
        """`cmd` between a /dev/kmsg canary and a dmesg read, with the taint before and after,
        all in one round trip: the kernel lines it caused come back with its output."""
        if not self.alive:
            raise self._error(GuestDied, "command", f"guest is not running for {cmd!r}")
        self._seq += 1
        stem = self._share.stem(self._seq)
        canary = dmesg.canary_line(label, f"{self._token}-{self._seq}")
        try:
            self._share.create(f"{stem}.sh", (cmd + "\n").encode())
        except FileReadError as err:
            self._fail_hostile(f"cannot write the command script: {err}")
        note = f"{label}: {cmd}"  # names the step in the console log and in a timeout
        self._note(f"[{self._seq}] {note}")
        start = time.monotonic()
        self._child.sendline(f"klp_logged {stem} {self._seq} '{canary}'")
        status = self._wait_status(stem, timeout * self.timeout_scale, f"no answer to {note!r}")
        seconds = time.monotonic() - start
        output = self.read_file(f"{stem}.out").decode(errors="replace")
        # "<status> <taint before>" in .rc; the kernel lines, then the taint after, in .dmesg.
        log = self.read_file(f"{stem}.dmesg").decode(errors="replace")
        lines = dmesg.lines_since(log, canary)
        if lines is None:
            raise BootError(
                self._message("command", f"canary {canary!r} not in dmesg (ring buffer overrun?)")
            )
        fields = self._share.read_status(f"{stem}.rc").split()
        try:
            if len(fields) != 2 or not lines:
                raise ValueError(f"no taint values (status line {' '.join(fields)!r})")
            before, after = dmesg.parse_tainted(fields[1]), dmesg.parse_tainted(lines.pop())
        except ValueError as err:
            raise BootError(
                self._message("command", f"{cmd!r}: kernel state not read: {err}")
            ) from None
        lines = [line for line in lines if line.strip() != f"{canary} end"]
        return LoggedResult(CommandResult(cmd, output, status, seconds), lines, before, after)

    def kmsg_canary(self, label: str) -> str:
        """Write a unique line to /dev/kmsg and return it; `dmesg_since` finds it again."""
        line = dmesg.canary_line(label, f"{self._token}-{self._seq + 1}")
        self.checked(f"echo '{line}' > /dev/kmsg")
        return line

    def dmesg_since(self, canary: str) -> list[str]:
        """Kernel messages logged after `canary` (timestamps stripped)."""
        lines = dmesg.lines_since(self.checked("dmesg"), canary)
        if lines is None:
            raise BootError(
                self._message("command", f"canary {canary!r} not in dmesg (ring buffer overrun?)")
            )
        return lines

    def kallsyms(self) -> str:
        """The guest's /proc/kallsyms, fetched once per boot through the shared dir."""
        if self._kallsyms is None:
            # /proc/kallsyms reads 4 KiB at a time; 1 MiB writes halve the 9p cost.
            self.checked("dd if=/proc/kallsyms of=kallsyms.txt bs=1M iflag=fullblock", timeout=120)
            data = self.read_file("kallsyms.txt", KALLSYMS_LIMIT)
            self._kallsyms = data.decode(errors="replace")
        return self._kallsyms

    @property
    def kallsyms_path(self) -> Path:
        return self.share_dir / "kallsyms.txt"

    def tainted(self) -> int:
        try:
            return dmesg.parse_tainted(self.checked("cat /proc/sys/kernel/tainted"))
        except ValueError as err:
            raise BootError(self._message("command", str(err))) from None

    # -- internals -------------------------------------------------------------------------

    def _fail_hostile(self, what: str) -> NoReturn:
        self.kill()
        raise self._error(
            GuestFileError, "shared dir", f"{what}; the guest was stopped (hostile or broken)"
        )

    def _note(self, text: str) -> None:
        """A host-side line in the console log, so it reads as a transcript."""
        first, *rest = text.splitlines() or [""]
        more = f" (+{len(rest)} lines)" if rest else ""
        self._log.write(f"\n# klp-harness: {first[:300]}{more}\n".encode())
        self._log.flush()

    def _message(self, phase: Phase, what: str) -> str:
        return str(self._error(GuestError, phase, what))

    def _error(self, kind: type[GuestError], phase: Phase, what: str) -> GuestError:
        tail = console_tail(self.console_log)
        message = (
            f"{self.kernel_name} ({self.accel}): {phase}: {what}\n"
            f"--- last console lines ({self.console_log}) ---\n{tail}"
        )
        return kind(message, f"{phase}: {what}", tuple(tail.split("\n")))

    def _expect(
        self, pattern: str, timeout: float, phase: Phase, what: str, *, retry: bool = False
    ) -> re.Match[bytes]:
        """Wait for `pattern`; EOF raises GuestDied, a timeout GuestTimeout (or _Retry)."""
        index = self._child.expect(
            [re.compile(pattern.encode()), pexpect.EOF, pexpect.TIMEOUT], timeout=timeout
        )
        if index == 0:
            match = self._child.match
            assert isinstance(match, re.Match)
            return match
        if index == 1:
            self.kill()
            code, sig = self._child.exitstatus, self._child.signalstatus
            status = f"qemu exit status {code}" if code is not None else f"signal {sig}"
            raise self._error(
                GuestDied, phase, f"the guest ended ({status}{self._cause()}); {what}"
            )
        if retry:
            raise _Retry
        self._fail_timeout(phase, f"{what} within {timeout:.0f} s")

    def _wait_status(self, stem: str, timeout: float, what: str) -> int:
        """The exit status from the console marker, or else from the `.rc` file.

        The file is the fallback for a marker garbled by kernel messages interleaving on
        the console (possible when the console log level is raised).
        """
        deadline = time.monotonic() + timeout
        marker = rf"{self._token}:{self._seq}:(\d+)\r*\n"
        while True:
            left = deadline - time.monotonic()
            try:
                match = self._expect(marker, min(1.0, max(left, 0.01)), "command", what, retry=True)
                return int(match.group(1))
            except _Retry:
                try:
                    text = self._share.read_status(f"{stem}.rc")
                except FileReadError as err:
                    self._fail_hostile(str(err))
                first = text.split(maxsplit=1)[0] if text else ""
                if first.isdigit():
                    return int(first)
                if left <= 0:
                    self._fail_timeout("command", f"{what} within {timeout:.0f} s")

    def _cause(self) -> str:
        """The console's last splat (usually the panic line), as a hint in the message."""
        line = dmesg.last_splat(console_tail(self.console_log, 200))
        return f" after: {line}" if line else ""

    def _fail_timeout(self, phase: Phase, what: str) -> NoReturn:
        self.kill()
        raise self._error(GuestTimeout, phase, what + "; the guest was stopped")


class _Retry(Exception):
    """Internal: a wait that the caller retries."""
