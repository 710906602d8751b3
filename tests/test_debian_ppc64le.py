"""Debian's ppc64el kernels: specs with the powerpc64le flavour, the ELF image found and used
to place its own recovered table, and apt updates against a mirror caught mid-sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import KernelError
from harness.kernels.acquire import image_paths
from harness.kernels.apt import judge_update
from harness.kernels.spec import load_matrix, parse_spec
from harness.paths import KERNELS_DIR

SYNCING = """\
Hit:1 http://deb.debian.org/debian bookworm InRelease
Err:16 http://deb.debian.org/debian trixie-backports/main ppc64el Packages
  File has unexpected size (270640 != 292336). Mirror sync in progress? [IP: 203.0.113.80 80]
E: Failed to fetch http://deb.debian.org/debian/dists/trixie-backports/main/binary-ppc64el/Packages.xz  File has unexpected size (270640 != 292336). Mirror sync in progress? [IP: 203.0.113.80 80]
E: Some index files failed to download. They have been ignored, or old ones used instead.
"""  # noqa: E501 (apt's own lines, as apt-get update printed them here)


def test_ppc64le_specs() -> None:
    suite = parse_spec("debian:bookworm:ppc64le")
    assert (suite.flavour, suite.arch, suite.text) == ("powerpc64le", "ppc64le", suite.text)
    abi = parse_spec("debian:6.1.0-50-powerpc64le")
    assert (abi.abi, abi.arch) == ("6.1.0-50-powerpc64le", "ppc64le")
    with pytest.raises(KernelError, match="flavour powerpc64le, for ppc64le, not arm64"):
        parse_spec("debian:6.1.0-50-powerpc64le:arm64")
    (decl,) = load_matrix(KERNELS_DIR / "debian-ppc64le.toml")
    assert parse_spec(decl.spec).arch == "ppc64le"


def test_the_elf_image_is_the_kernel(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "vmlinux-6.1.0-50-powerpc64le").write_bytes(b"\x7fELF")
    assert image_paths(tmp_path, "6.1.0-50-powerpc64le")["vmlinuz"].name.startswith("vmlinux-")
    (boot / "vmlinuz-6.1.0-50-powerpc64le").write_bytes(b"x")
    assert image_paths(tmp_path, "6.1.0-50-powerpc64le")["vmlinuz"].name.startswith("vmlinuz-")


def test_a_mirror_mid_sync_is_a_warning_other_failures_are_not() -> None:
    failed, fatal = judge_update(SYNCING, 100)
    assert fatal == "" and failed == [
        "http://deb.debian.org/debian trixie-backports/main ppc64el Packages"
    ]
    assert judge_update("Hit:1 http://deb.debian.org/debian bookworm InRelease\n", 0) == ([], "")
    offline = "Err:1 http://x bookworm InRelease\n  Could not resolve 'x'\nW: Failed to fetch\n"
    assert judge_update(offline + "E: Could not get lock /var/lib/apt/lists/lock\n", 100)[1]
    assert judge_update("E: The repository is not signed.\n", 100)[1].startswith("E: The repo")
