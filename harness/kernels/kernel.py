"""The value the kernel-acquisition stage hands to every later stage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import KernelError

_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def read_config(path: Path) -> dict[str, str]:
    """A kernel .config as {"CONFIG_X": "y"|"m"|"n"|value}; unset options map to "n"."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise KernelError(f"{path}: cannot read kernel config: {err.strerror}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        if m := _CONFIG_LINE.match(line):
            values[m.group(1)] = m.group(2).strip('"') if m.group(2).startswith('"') else m.group(2)
        elif m := _CONFIG_UNSET.match(line):
            values[m.group(1)] = "n"
    return values


@dataclass(frozen=True)
class Kernel:
    """One kernel, fetched (or built) and ready: boot it, build against it, resolve against it."""

    spec: str  # as the user wrote it: "debian:bookworm", "debian:6.1.0-47-amd64", "local:PATH"
    name: str  # short id for tables and directories, e.g. "debian-6.1.0-56-amd64"
    release: str  # `uname -r` of the guest, e.g. "6.1.0-56-amd64"
    package_version: str  # e.g. "6.1.192-2"; a commit or "local" for other sources
    vmlinuz: Path
    modules_dir: Path  # the guest's /lib/modules/<release> content
    config: Path
    headers: Path  # a tree that `make -C <headers> M=<dir> modules` builds against
    symvers: Path  # Module.symvers
    kallsyms: Path  # the symbol table recovered from vmlinuz, /proc/kallsyms format, kallsyms order
    packages: tuple[str, ...] = ()  # "name=version" of every package it came from
    _config: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def version(self) -> tuple[int, int, int]:
        m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", self.release)
        if not m:
            raise KernelError(f"{self.name}: cannot read a version from release {self.release!r}")
        return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)

    def config_value(self, option: str) -> str:
        """`self.config_value("LIVEPATCH")` -> "y" / "m" / "n" / value ("n" when absent)."""
        if not self._config:
            self._config.update(read_config(self.config))
        key = option if option.startswith("CONFIG_") else f"CONFIG_{option}"
        return self._config.get(key, "n")
