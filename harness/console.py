"""One Printer for progress and warnings on stderr.

Every stage that reports progress takes a `Printer` instead of a `quiet` flag. With `-j 2`
two kernels report at once: `for_kernel()` gives each its own prefix, and one lock keeps
their lines whole. On a terminal a long step shows one self-rewriting progress line; in a
CI log (not a terminal) the same step prints plain lines, a few per step at most."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

from harness.fileio import printable

PROGRAM = "klp-harness"
# In a log, a progress line per this fraction of the work at most.
LOG_STEP = 0.25


@dataclass
class _Sink:
    """What all printers derived from one another share: the stream and its lock."""

    stream: TextIO
    tty: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    open_bar: bool = False  # a progress line is on screen without its newline


class Printer:
    """Progress (`say`, `progress`: silenced by quiet) and warnings (`warn`: always shown)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        tty: bool | None = None,
        prefix: str = "",
        _sink: _Sink | None = None,
    ) -> None:
        if _sink is None:
            out = stream if stream is not None else sys.stderr
            isatty = getattr(out, "isatty", None)
            _sink = _Sink(out, bool(isatty and isatty()) if tty is None else tty)
        self._sink = _sink
        self.quiet = quiet
        self.prefix = prefix
        self._logged: dict[str, float] = {}

    @property
    def tty(self) -> bool:
        return self._sink.tty

    def for_kernel(self, name: str) -> Printer:
        """A printer whose lines say which kernel they belong to (sharing this one's stream)."""
        prefix = f"{self.prefix}[{name}] "
        return Printer(quiet=self.quiet, prefix=prefix, _sink=self._sink)

    def silent(self) -> Printer:
        """The same printer with progress off (warnings still shown)."""
        return Printer(quiet=True, prefix=self.prefix, _sink=self._sink)

    def say(self, text: str) -> None:
        """A progress line; guest or file text in it is escaped."""
        if not self.quiet:
            self._write(text)

    def warn(self, text: str) -> None:
        """A warning: shown even when quiet."""
        self._write(f"warning: {text}")

    def progress(self, what: str, done: int, total: int) -> None:
        """`done` of `total` units of `what`: a bar on a terminal, a few lines in a log."""
        if self.quiet or total <= 0:
            return
        fraction = min(done / total, 1.0)
        if self._sink.tty:
            width = 30
            bar = "#" * int(fraction * width)
            text = f"{PROGRAM}: {self.prefix}{printable(what)} [{bar:<{width}}] {fraction:4.0%}"
            with self._sink.lock:
                self._sink.stream.write("\r" + text + ("\n" if done >= total else ""))
                self._sink.stream.flush()
                self._sink.open_bar = done < total
            return
        last = self._logged.get(what)
        if last is None or fraction >= last + LOG_STEP or (done >= total and last < 1.0):
            self._logged[what] = fraction
            self._write(f"{what}: {fraction:.0%}")

    def _write(self, text: str) -> None:
        line = f"{PROGRAM}: {self.prefix}{printable(text)}\n"
        with self._sink.lock:
            if self._sink.open_bar:  # end the progress line before a normal one
                self._sink.stream.write("\n")
                self._sink.open_bar = False
            self._sink.stream.write(line)
            self._sink.stream.flush()
