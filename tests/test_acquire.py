"""Kernel acquisition: a real fetch of the default kernel (network and ~300 MB of cache on
the first run, fast afterwards) and the cache's repair behaviour on fake packages."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakedebs import ABI, fake_recover, fake_resolution

from harness.console import Printer
from harness.errors import KernelError, SymbolFileError
from harness.kernels import acquire as acq
from harness.kernels import kallsyms
from harness.kernels.kernel import Kernel
from harness.kernels.spec import default_spec, parse_spec
from harness.kernels.verify import MARKER

HELLO = """\
#include <linux/module.h>
static int __init hello_init(void) { return 0; }
static void __exit hello_exit(void) {}
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def quiet() -> Printer:
    """Progress off (the repairs are warnings, said all the same), on the stderr of now."""
    return Printer(quiet=True)


@pytest.fixture(scope="module")
def default_kernel() -> Kernel:
    return acq.acquire(default_spec(), printer=quiet())


def test_default_kernel_tree(default_kernel: Kernel) -> None:
    k = default_kernel
    assert k.spec == "debian:bookworm" and k.name == f"debian-{k.release}"
    assert k.release.endswith("-amd64") and k.version[:2] == (6, 1)
    assert k.vmlinuz.is_file() and k.vmlinuz.stat().st_size > 5_000_000
    assert k.config.is_file() and k.config_value("CC_VERSION_TEXT").startswith("gcc-12")
    assert k.modules_dir.is_dir() and (k.modules_dir / "kernel").is_dir()
    assert k.symvers == k.headers / "Module.symvers" and k.symvers.stat().st_size > 100_000
    assert any(p.startswith(("linux-image-", "linux-binary-")) for p in k.packages)
    assert all(p.endswith(f"={k.package_version}") or "kbuild" in p for p in k.packages)


def test_symbol_table(default_kernel: Kernel) -> None:
    symbols = kallsyms.read(default_kernel.kallsyms)
    assert len(symbols) > 50_000
    assert any(s.name == "kernel_clone" and s.type in "Tt" for s in symbols)
    assert all(s.module is None for s in symbols)
    line = default_kernel.kallsyms.read_text().splitlines()[0]
    assert len(line.split()[0]) == 16
    # Debian's own System.map is only a placeholder; ours is the real thing
    maps = list(default_kernel.vmlinuz.parent.glob("System.map*"))
    assert maps and kallsyms.is_placeholder_system_map(maps[0])
    assert not kallsyms.is_placeholder_system_map(default_kernel.kallsyms)


def test_headers_build_a_module(default_kernel: Kernel, tmp_path: Path) -> None:
    (tmp_path / "hello.c").write_text(HELLO)
    (tmp_path / "Kbuild").write_text("obj-m := hello.o\n")
    proc = subprocess.run(
        ["make", "-C", str(default_kernel.headers), f"M={tmp_path}", "modules"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "hello.ko").is_file()


def test_warm_acquire_calls_no_apt(default_kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess on a warm cache: {args}")

    monkeypatch.setattr("harness.kernels.apt.subprocess.run", no_subprocess)
    monkeypatch.setattr("harness.kernels.acquire.subprocess.run", no_subprocess)
    start = time.monotonic()
    again = acq.acquire(default_spec(), printer=quiet())
    assert again == default_kernel
    assert time.monotonic() - start < 1.0
    assert acq.cached("bookworm") == default_kernel


# -- the cache's behaviour, on fake packages -------------------------------------------------


def test_broken_entry_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(kallsyms, "recover", fake_recover)
    res = fake_resolution(tmp_path)
    entry = res.entry
    (entry / "root").mkdir(parents=True)  # an interrupted run's leftovers: no marker
    (entry / "root/junk").write_text("x")
    spec = parse_spec(f"debian:{ABI}")
    kernel = acq._install(None, res, spec, quiet())
    assert kernel.vmlinuz.is_relative_to(entry)
    assert (entry / MARKER).is_file() and not (entry / "root/junk").exists()
    assert kernel.config_value("LIVEPATCH") == "y" and kernel.vmlinuz.is_file()
    makefile = (kernel.headers / "Makefile").read_text()
    assert makefile == f"include {entry}/root/usr/src/linux-headers-{ABI}c/Makefile\n"
    subprocess.run(["make", "-s", "-C", str(kernel.headers)], check=True)
    assert not list(tmp_path.glob("kernels/.debian-*"))  # no staging dir left behind


def test_missing_vmlinuz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    res = fake_resolution(tmp_path, with_vmlinuz=False)
    with pytest.raises(KernelError, match="no vmlinuz"):
        acq._install(None, res, parse_spec(f"debian:{ABI}"), quiet())
    assert not res.entry.exists()


def test_dpkg_deb_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    res = fake_resolution(tmp_path)
    # an index without Size and SHA256: the .deb cannot be checked before dpkg-deb reads it
    res = replace(res, packages=tuple(replace(p, size=0, sha256="") for p in res.packages))
    (tmp_path / "debs" / res.packages[0].deb).write_bytes(b"garbage")
    with pytest.raises(KernelError, match="dpkg-deb"):
        acq._install(None, res, parse_spec(f"debian:{ABI}"), quiet())


def test_kallsyms_finder_failure(tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"\0" * 4096)
    with pytest.raises(KernelError, match="kallsyms-finder failed"):
        kallsyms.recover(bogus, tmp_path / "out")


def test_local_tree(
    default_kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Debian vmlinuz is a bzImage: lay it out as a user's build tree would.
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "include/config").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").symlink_to(default_kernel.vmlinuz)
    (tree / ".config").symlink_to(default_kernel.config)
    (tree / "Module.symvers").symlink_to(default_kernel.symvers)
    (tree / "System.map").write_text("ffffffff81000000 T _text\n")
    (tree / "include/config/kernel.release").write_text(f"{default_kernel.release}\n")
    local = acq.acquire(f"local:{tree}", printer=quiet())
    assert (local.name, local.package_version) == (f"local-{default_kernel.release}", "local")
    assert local.headers == tree and local.vmlinuz == tree / "arch/x86/boot/bzImage"
    assert local.kallsyms.read_text() == default_kernel.kallsyms.read_text()
    assert local.modules_dir.is_dir()
    assert acq.cached(f"local:{tree}") == local


def test_table_is_read_by_the_one_kallsyms_parser(tmp_path: Path) -> None:
    table = tmp_path / "kallsyms"
    table.write_text("ffffffff81000000 T _text\nffffffff81000010 t helper\n")
    assert [(s.address, s.type, s.name) for s in kallsyms.read(table)] == [
        (0xFFFFFFFF81000000, "T", "_text"),
        (0xFFFFFFFF81000010, "t", "helper"),
    ]
    table.write_text("ffffffff81000000 T _text\nnot a symbol line at all\n")
    with pytest.raises(SymbolFileError, match=f"^{table}:2: not a System.map/kallsyms line"):
        kallsyms.read(table)
