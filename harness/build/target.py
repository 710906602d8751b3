"""The kernel `klp-harness make` builds for: a spec, a headers/build directory, or the host's.

A directory brings its headers, .config and Module.symvers; its symbol table (for sympos
and for what can be converted at all) is looked up in this order, the first that exists
and is real winning: --system-map; DIR/System.map; the recovered table of the harness's
cache entry when DIR is a cached kernel's headers; `/boot/System.map-<release>` (or the
7.x layout's `/usr/lib/modules/<release>/System.map`); recovered from that release's
vmlinuz (kept in the harness cache); `/proc/kallsyms` when <release> is the running
kernel's and its addresses are not zeroed. Debian's one-line placeholder System.map is
skipped. Where `/` and the running release are is a `Host`, so that tests can point it
at an extracted Debian root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache import atomic_write_text, cache_dir, cache_key, cache_root, locked
from harness.console import Printer
from harness.errors import HarnessError, KernelError
from harness.fileio import printable
from harness.kernels import kallsyms
from harness.kernels.kernel import Kernel

__all__ = ["Host", "Target", "dir_target", "host_target", "release_of", "spec_target"]

_UTS_RELEASE = re.compile(r'^#define UTS_RELEASE "([^"]+)"', re.MULTILINE)
MAX_LINKS = 40  # as the kernel's own limit on nested symlinks


@dataclass(frozen=True)
class Host:
    """Where the machine's kernel files live, and which kernel runs."""

    root: Path = Path("/")
    running: str = field(default_factory=lambda: os.uname().release)
    proc_kallsyms: Path = Path("/proc/kallsyms")

    def path(self, absolute: str) -> Path:
        """`absolute` (e.g. "/boot/System.map-6.1.0") under this root."""
        return self.root / absolute.lstrip("/")

    def resolve(self, path: Path) -> Path:
        """`path` with its symlinks followed as seen from inside the root: an absolute
        target (Debian's `build -> /usr/src/linux-headers-...`) is taken under the root."""
        if self.root == Path("/"):
            return path.resolve()
        current = path
        for _ in range(MAX_LINKS):
            if not current.is_symlink():
                return current.resolve()
            target = Path(os.readlink(current))
            current = self.path(str(target)) if target.is_absolute() else current.parent / target
        raise KernelError(f"{printable(path)}: too many levels of symbolic links")


@dataclass(frozen=True)
class Target:
    kernel: Kernel
    table: str  # where its symbol table came from, e.g. "/boot/System.map-6.1.0-57-amd64"


def spec_target(spec: str, *, printer: Printer | None = None) -> Target:
    """A kernel the harness fetches or builds (debian:..., source:..., local:...)."""
    from harness.kernels.acquire import acquire  # apt and friends only when a spec is given

    kernel = acquire(spec, printer=printer)
    return Target(kernel, f"{kernel.kallsyms} (klp-harness's table of {spec})")


def release_of(build: Path) -> str:
    """The release modules built there must match: UTS_RELEASE (Debian's kernel.release
    holds the upstream version instead), else include/config/kernel.release."""
    uts = build / "include/generated/utsrelease.h"
    try:
        if m := _UTS_RELEASE.search(uts.read_text(errors="replace")):
            return m.group(1)
    except OSError:
        pass
    try:
        return (build / "include/config/kernel.release").read_text().strip()
    except OSError:
        raise KernelError(
            f"{printable(build)}: no include/generated/utsrelease.h or "
            "include/config/kernel.release: not a prepared kernel build directory"
        ) from None


def host_target(
    host: Host | None = None, *, system_map: Path | None = None, printer: Printer | None = None
) -> Target:
    """The running kernel: `/lib/modules/$(uname -r)/build` under the host's root."""
    host = host or Host()
    release = host.running
    tried: list[str] = []
    for where in (f"/lib/modules/{release}/build", f"/usr/lib/modules/{release}/build"):
        link = host.path(where)
        build = host.resolve(link)
        if build.is_dir():
            return dir_target(build, system_map=system_map, host=host, printer=printer)
        if link.is_symlink():
            tried.append(f"{where} -> {os.readlink(link)} (dangling)")
        else:
            tried.append(f"{where} (missing)")
    raise KernelError(
        f"no headers for the running kernel {release}: {'; '.join(tried)} (install its "
        "headers package, or give --kernel SPEC or --kernel-dir DIR)"
    )


def dir_target(
    build: Path,
    *,
    system_map: Path | None = None,
    host: Host | None = None,
    printer: Printer | None = None,
) -> Target:
    """A headers or build directory (Makefile, .config, Module.symvers, its release)."""
    host = host or Host()
    build = Path(os.path.abspath(build))
    if not build.is_dir():
        what = "not a directory" if build.exists() else "no such directory"
        raise KernelError(f"{printable(build)}: {what} (a kernel headers/build directory)")
    need = ("Makefile", ".config", "Module.symvers")
    missing = [name for name in need if not (build / name).is_file()]
    if missing:
        raise KernelError(
            f"{printable(build)}: not a kernel headers/build directory: no {', '.join(missing)}"
        )
    release = release_of(build)
    table, vmlinuz = _symbol_table(build, release, system_map, host, printer or Printer())
    modules = host.path(f"/lib/modules/{release}")
    kernel = Kernel(
        spec=str(build),
        name=release,
        release=release,
        package_version="local",
        vmlinuz=vmlinuz or build,
        modules_dir=modules if modules.is_dir() else build,
        config=build / ".config",
        headers=build,
        symvers=build / "Module.symvers",
        kallsyms=table,
    )
    return Target(kernel, str(table))


def _symbol_table(
    build: Path, release: str, system_map: Path | None, host: Host, printer: Printer
) -> tuple[Path, Path | None]:
    """(the symbol table, the vmlinuz it came from if any); KernelError listing what was tried."""
    if system_map is not None:
        if not system_map.exists():
            raise KernelError(f"--system-map {printable(system_map)}: no such file")
        if kallsyms.is_placeholder_system_map(system_map):
            raise KernelError(
                f"--system-map {printable(system_map)}: Debian's placeholder, not a symbol table"
            )
        return system_map, None
    tried: list[str] = []
    maps = [host.path(p) for p in _layouts(release, "System.map-{r}", "System.map")]
    for path in dict.fromkeys([build / "System.map", *maps]):
        if not path.exists():
            tried.append(f"{path} (missing)")
        elif kallsyms.is_placeholder_system_map(path):
            tried.append(f"{path} (Debian's placeholder)")
        else:
            return path, None
        if path == build / "System.map":  # a cached kernel's headers: its recovered table
            if entry := _cache_entry(build):
                return entry, None
            tried.append("the harness cache (not a cached kernel's headers)")
    for vmlinuz in dict.fromkeys(host.path(p) for p in _layouts(release, "vmlinuz-{r}", "vmlinuz")):
        if not vmlinuz.is_file():
            tried.append(f"{vmlinuz} (missing)")
            continue
        try:
            return _recovered(vmlinuz, printer), vmlinuz
        except HarnessError as err:
            tried.append(f"{vmlinuz} (recovery failed: {err})")
    if release != host.running:
        tried.append(f"{host.proc_kallsyms} (the running kernel is {host.running})")
    elif problem := _kallsyms_problem(host.proc_kallsyms):
        tried.append(f"{host.proc_kallsyms} ({problem})")
    else:
        return host.proc_kallsyms, None
    raise KernelError(f"no symbol table for {release}: tried {'; '.join(tried)}")


def _layouts(release: str, boot_name: str, modules_name: str) -> list[str]:
    """/boot/<name>-<release> (up to 6.12), /usr/lib/modules/<release>/<name> (Debian 7.x)."""
    return [
        f"/boot/{boot_name.format(r=release)}",
        f"/usr/lib/modules/{release}/{modules_name}",
        f"/lib/modules/{release}/{modules_name}",
    ]


def _cache_entry(build: Path) -> Path | None:
    """The recovered kallsyms of the cache entry whose headers `build` is."""
    kernels = cache_root() / "kernels"
    real = build.resolve()
    if not kernels.is_dir() or not real.is_relative_to(kernels.resolve()):
        return None
    parts = real.relative_to(kernels.resolve()).parts
    table = kernels / parts[0] / "kallsyms" if parts else None
    return table if table is not None and table.is_file() else None


def _recovered(vmlinuz: Path, printer: Printer) -> Path:
    """The table recovered from `vmlinuz`, kept in the cache until the file changes."""
    st = vmlinuz.stat()
    store = cache_dir("recovered", cache_key(str(vmlinuz.resolve()).strip("/")[-80:]))
    table, stamp = store / "kallsyms", store / "kallsyms.source"
    want = f"{st.st_size} {st.st_mtime_ns}"
    with locked(table):
        if not (table.is_file() and stamp.is_file() and stamp.read_text() == want):
            printer.say(f"recovering the symbol table from {vmlinuz}")
            rec = kallsyms.recover(vmlinuz, table)
            printer.say(f"{rec.count} symbols in {rec.seconds:.1f} s")
            atomic_write_text(stamp, want)
    return table


def _kallsyms_problem(path: Path) -> str | None:
    """Why the running kernel's kallsyms cannot serve, or None."""
    # Per-cpu symbols sit at 0 (the first hundreds of lines): look on to a real address.
    try:
        with open(path, errors="replace") as handle:
            for line in handle:
                if line.strip() and int(line.split()[0], 16):
                    return None
    except OSError as err:
        return f"unreadable: {err.strerror}"
    except ValueError:
        return "not in kallsyms format"
    return "addresses zeroed: kernel.kptr_restrict, or not root"
