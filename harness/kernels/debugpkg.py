"""A Debian kernel's linked vmlinux, from its -dbg package (linux-image-<abi>-dbg, about 860 MB
to download, several GB unpacked): fetched through the private apt root only when asked for,
only vmlinux taken out of it (streamed), and the package deleted when the caller is done."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.cache import cache_dir, locked
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.apt import pdeathsig, private_root
from harness.kernels.arch import find_arch
from harness.kernels.kernel import Kernel


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def debug_package(kernel: Kernel) -> tuple[str, str]:
    """(name, version) of the kernel's -dbg package: built from the same source version."""
    return f"linux-image-{kernel.release}-dbg", kernel.package_version


def _is_vmlinux(member: tarfile.TarInfo, release: str) -> bool:
    name = Path(member.name).name
    return member.isfile() and name in ("vmlinux", f"vmlinux-{release}")


def extract_vmlinux(deb: Path, dest: Path, release: str) -> None:
    """Stream the package's data and write its vmlinux to `dest`; stops reading once found."""
    proc = subprocess.Popen(
        [*pdeathsig(), "dpkg-deb", "--fsys-tarfile", str(deb)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    found = False
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if _is_vmlinux(member, release):
                    source = archive.extractfile(member)
                    assert source is not None
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    found = True
                    break
    except tarfile.TarError as err:
        raise KernelError(f"{deb.name}: cannot read its data: {err}") from None
    finally:
        proc.kill()
        proc.wait()
    if not found:
        raise KernelError(f"{deb.name}: holds no vmlinux")


@contextlib.contextmanager
def debug_vmlinux(kernel: Kernel, printer: Printer) -> Iterator[Path]:
    """The kernel's linked vmlinux, in a temp dir removed (with the package) afterwards."""
    name, version = debug_package(kernel)
    apt = private_root(find_arch(kernel.arch).debian)
    record = apt.show(f"{name}={version}")
    if record is None:
        raise KernelError(
            f"{kernel.name}: {name}={version} is not in the apt lists: a file-based sympos "
            "needs the kernel's linked vmlinux, which Debian ships only there"
        )
    size = int(record.get("Size", "0") or 0)
    work = Path(tempfile.mkdtemp(prefix=".dbg.", dir=cache_dir("sourcefiles")))
    try:
        printer.say(
            f"a file-based sympos needs {kernel.name}'s linked vmlinux: downloading {name} "
            f"{version} ({_mib(size)}); only a compact index is kept"
        )
        start = time.monotonic()
        with locked(apt.root / "lists"):  # apt-get reads the lists an update rewrites
            apt.download([(name, version)], work, printer=printer, size=size)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"download failed: apt-get did not produce {name}")
        printer.say(
            f"downloaded {_mib(debs[0].stat().st_size)} in {time.monotonic() - start:.0f} s"
        )
        start = time.monotonic()
        vmlinux = work / "vmlinux"
        extract_vmlinux(debs[0], vmlinux, kernel.release)
        debs[0].unlink()  # the package is not kept
        printer.say(
            f"took vmlinux ({_mib(vmlinux.stat().st_size)}) out of it in "
            f"{time.monotonic() - start:.0f} s; deleted the package"
        )
        yield vmlinux
    finally:
        shutil.rmtree(work, ignore_errors=True)
