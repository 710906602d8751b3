"""Fake Debian kernel packages (real .debs built with dpkg-deb) for cache tests that need no
mirror: a linux-image with a vmlinuz that has a plausible boot header, headers that build."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from harness.kernels import kallsyms
from harness.kernels.resolve import Pkg, Resolution
from harness.kernels.verify import digest


def bzimage(syssize: int = 16, cut: int = 0) -> bytes:
    """A file with a plausible x86 boot header: (1 + 1) setup sectors + syssize * 16 bytes."""
    data = bytearray(2 * 512 + syssize * 16)
    data[0x1F1] = 1
    data[0x1F4:0x1F8] = syssize.to_bytes(4, "little")
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    return bytes(data[: len(data) - cut])


def make_deb(
    out: Path, name: str, files: dict[str, str | bytes], links: dict[str, str] | None = None
) -> None:
    root = out / f"{name}.src"
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (root / rel).write_bytes(content)
        else:
            (root / rel).write_text(content)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    subprocess.run(
        [
            "dpkg-deb",
            "--build",
            "--root-owner-group",
            str(root),
            str(out / f"{name}_1.0-1_amd64.deb"),
        ],
        check=True,
        capture_output=True,
    )


ABI = "9.9.0-1-amd64"


def fake_resolution(cache: Path, with_vmlinuz: bool = True) -> Resolution:
    debs = cache / "debs"
    debs.mkdir(parents=True)
    image: dict[str, str | bytes] = {f"boot/config-{ABI}": "CONFIG_LIVEPATCH=y\n"}
    if with_vmlinuz:
        image[f"boot/vmlinuz-{ABI}"] = bzimage()
    make_deb(debs, "linux-image-x", image)
    make_deb(
        debs,
        "linux-headers-x",
        {
            f"usr/src/linux-headers-{ABI}/Makefile": (
                f"include /usr/src/linux-headers-{ABI}c/Makefile\n"
            ),
            f"usr/src/linux-headers-{ABI}/Module.symvers": "",
            f"usr/src/linux-headers-{ABI}c/Makefile": "all:\n",
            "usr/lib/linux-kbuild-9.9/scripts/Kbuild.include": "",
        },
        {f"usr/src/linux-headers-{ABI}/scripts": "../../lib/linux-kbuild-9.9/scripts"},
    )
    pkgs = []
    for n in ("linux-image-x", "linux-headers-x"):
        size, sha = digest(debs / f"{n}_1.0-1_amd64.deb")  # what apt's index would say
        pkgs.append(Pkg(n, "1.0-1", "amd64", size, sha))
    return Resolution(ABI, "1.0-1", tuple(pkgs), time.time())


def fake_recover(vmlinuz: Path, out: Path, timeout: float = 0) -> kallsyms.Recovered:
    out.write_text("ffffffff81000000 T _text\n")
    return kallsyms.Recovered(out, 1, 0.0)
