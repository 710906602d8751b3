"""What a guest command gives back, and the errors that end a guest (harness.vm.guest)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import BootError


@dataclass(frozen=True)
class LoggedResult:
    result: CommandResult
    lines: list[str]  # kernel messages logged while it ran
    taint_before: int
    taint_after: int


class GuestError(BootError):
    """A running guest was lost. `what` is the one-line cause, `tail` the console's last
    lines at that moment (the evidence a step that was running gets)."""

    def __init__(self, message: str, what: str = "", tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.what = what or message.split("\n", 1)[0]
        self.tail = tail


class GuestDied(GuestError):
    """The guest ended by itself: a panic (`panic=-1`, `-no-reboot`), a triple fault, qemu died."""


class GuestTimeout(GuestError):
    """The guest did not answer in time (hang, or boot too slow); it has been stopped."""


class GuestFileError(GuestError):
    """A file the guest was to write is not a plain regular file of sane size (a symlink,
    FIFO, device node, directory or huge file): the guest is hostile and is stopped."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    output: str  # stdout and stderr, interleaved as written
    status: int  # the shell's $? (128+N when killed by signal N)
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 0
