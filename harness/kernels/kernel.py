"""The value the kernel-acquisition stage hands to every later stage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

from harness.errors import KernelError

_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """A kernel .config (or a config fragment) as {"CONFIG_X": "y"|"m"|"n"|value}: quotes
    around a string are dropped, `# CONFIG_X is not set` maps to "n", later lines win."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _CONFIG_LINE.match(line):
            value = m.group(2)
            quoted = len(value) >= 2 and value[0] == value[-1] == '"'
            values[m.group(1)] = value[1:-1] if quoted else value
        elif m := _CONFIG_UNSET.match(line):
            values[m.group(1)] = "n"
    return values


def read_config(path: Path) -> dict[str, str]:
    """`parse_config` of a file; a KernelError when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise KernelError(f"{path}: cannot read kernel config: {err.strerror}") from None
    return parse_config(text)


class KernelMeta(TypedDict):
    """What a cache entry records of its kernel; paths relative to the entry (or absolute)."""

    name: str
    release: str
    package_version: str
    packages: list[str]
    vmlinuz: str
    modules_dir: str
    config: str
    headers: str
    arch: NotRequired[str]  # kernels/arches/arches.toml name; absent: x86_64


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
    arch: str = "x86_64"  # what it runs on (kernels/arches/arches.toml)
    _config: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_meta(cls, spec: str, entry: Path, meta: KernelMeta) -> Kernel:
        """The kernel a cache entry holds: Module.symvers in the headers tree, the recovered
        symbol table beside the metadata (`entry/kallsyms`)."""
        headers = entry / meta["headers"]
        return cls(
            spec=spec,
            name=meta["name"],
            release=meta["release"],
            package_version=meta["package_version"],
            vmlinuz=entry / meta["vmlinuz"],
            modules_dir=entry / meta["modules_dir"],
            config=entry / meta["config"],
            headers=headers,
            symvers=headers / "Module.symvers",
            kallsyms=entry / "kallsyms",
            packages=tuple(meta["packages"]),
            arch=meta.get("arch", "x86_64"),
        )

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
