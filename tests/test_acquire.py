"""Kernel acquisition: a real fetch of the default kernel (network and ~300 MB of cache on
the first run, fast afterwards) and the cache's repair behaviour on fake packages."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness import acquire as acq
from harness import apt, kallsyms
from harness.errors import KernelError
from harness.kernel import Kernel
from harness.kernels import default_spec, parse_spec

HELLO = """\
#include <linux/module.h>
static int __init hello_init(void) { return 0; }
static void __exit hello_exit(void) {}
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def default_kernel() -> Kernel:
    return acq.acquire(default_spec(), quiet=True)


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
    assert any(name == "kernel_clone" and kind in "Tt" for _, kind, name in symbols)
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
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "hello.ko").is_file()


def test_warm_acquire_calls_no_apt(default_kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess on a warm cache: {args}")

    monkeypatch.setattr(apt.subprocess, "run", no_subprocess)
    monkeypatch.setattr(acq.subprocess, "run", no_subprocess)
    start = time.monotonic()
    again = acq.acquire(default_spec(), quiet=True)
    assert again == default_kernel
    assert time.monotonic() - start < 1.0
    assert acq.cached("bookworm") == default_kernel


# -- the cache's behaviour, on fake packages -------------------------------------------------


def _deb(out: Path, name: str, files: dict[str, str], links: dict[str, str] | None = None) -> None:
    root = out / f"{name}.src"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root),
                    str(out / f"{name}_1.0-1_amd64.deb")], check=True, capture_output=True)


ABI = "9.9.0-1-amd64"


def _fake(cache: Path, with_vmlinuz: bool = True) -> acq.Resolution:
    debs = cache / "debs"
    debs.mkdir(parents=True)
    image = {f"boot/config-{ABI}": "CONFIG_LIVEPATCH=y\n"}
    if with_vmlinuz:
        image[f"boot/vmlinuz-{ABI}"] = "not really a kernel"
    _deb(debs, "linux-image-x", image)
    _deb(debs, "linux-headers-x", {
        f"usr/src/linux-headers-{ABI}/Makefile":
            f"include /usr/src/linux-headers-{ABI}c/Makefile\n",
        f"usr/src/linux-headers-{ABI}/Module.symvers": "",
        f"usr/src/linux-headers-{ABI}c/Makefile": "all:\n",
        "usr/lib/linux-kbuild-9.9/scripts/Kbuild.include": "",
    }, {f"usr/src/linux-headers-{ABI}/scripts": "../../lib/linux-kbuild-9.9/scripts"})
    pkgs = tuple(acq.Pkg(n, "1.0-1", "amd64", 100) for n in ("linux-image-x", "linux-headers-x"))
    return acq.Resolution(ABI, "1.0-1", pkgs, time.time())


def _fake_recover(vmlinuz: Path, out: Path, timeout: float = 0) -> kallsyms.Recovered:
    out.write_text("ffffffff81000000 T _text\n")
    return kallsyms.Recovered(out, 1, 0.0)


def test_broken_entry_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(kallsyms, "recover", _fake_recover)
    res = _fake(tmp_path)
    entry = res.entry
    (entry / "root").mkdir(parents=True)  # an interrupted run's leftovers: no marker
    (entry / "root/junk").write_text("x")
    spec = parse_spec(f"debian:{ABI}")
    assert acq._install(None, res, spec, quiet=True) == entry
    assert (entry / acq.MARKER).is_file() and not (entry / "root/junk").exists()
    kernel = acq._kernel(spec, entry)
    assert kernel.config_value("LIVEPATCH") == "y" and kernel.vmlinuz.is_file()
    makefile = (kernel.headers / "Makefile").read_text()
    assert makefile == f"include {entry}/root/usr/src/linux-headers-{ABI}c/Makefile\n"
    subprocess.run(["make", "-s", "-C", str(kernel.headers)], check=True)
    assert not list(tmp_path.glob("kernels/.debian-*"))  # no staging dir left behind


def test_missing_vmlinuz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    res = _fake(tmp_path, with_vmlinuz=False)
    with pytest.raises(KernelError, match="no vmlinuz"):
        acq._install(None, res, parse_spec(f"debian:{ABI}"), quiet=True)
    assert not res.entry.exists()


def test_dpkg_deb_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    res = _fake(tmp_path)
    (tmp_path / "debs" / res.packages[0].deb).write_bytes(b"garbage")
    with pytest.raises(KernelError, match="dpkg-deb"):
        acq._install(None, res, parse_spec(f"debian:{ABI}"), quiet=True)


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
    local = acq.acquire(f"local:{tree}", quiet=True)
    assert (local.name, local.package_version) == (f"local-{default_kernel.release}", "local")
    assert local.headers == tree and local.vmlinuz == tree / "arch/x86/boot/bzImage"
    assert local.kallsyms.read_text() == default_kernel.kallsyms.read_text()
    assert local.modules_dir.is_dir()
    assert acq.cached(f"local:{tree}") == local
