"""Toolchain selection: the compiler-text parser, the host/build-root decision, the build
root wrapper, and one real module build against Debian 7.x headers in a trixie root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build import buildroot, toolchain
from harness.build.toolchain import CompilerVersion, parse_cc_version_text, suite_for
from harness.errors import ToolchainError
from harness.kernels.kernel import Kernel
from harness.kernels.mirrors import debian_mirror

# CONFIG_CC_VERSION_TEXT of real Debian kernels (from their headers packages' .config).
BULLSEYE_5_10 = "gcc-10 (Debian 10.2.1-6) 10.2.1 20210110"  # 5.10.0-32-amd64
BOOKWORM_6_1 = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"  # 6.1.0-56-amd64
TRIXIE_6_12 = "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"  # 6.12.107+deb13-amd64
TRIXIE_BPO_7_3 = "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"  # 7.3.4+deb13-amd64

HELLO_C = """\
#include <linux/module.h>
#include <linux/init.h>
static int __init hello_init(void) { pr_info("hello\\n"); return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_DESCRIPTION("klp-harness toolchain test");
MODULE_LICENSE("GPL");
"""


def _gcc(text: str) -> CompilerVersion:
    return parse_cc_version_text(text)


def _kernel(tmp: Path, cc_text: str, headers: Path | None = None, release: str = "x") -> Kernel:
    config = tmp / "config"
    config.write_text(f'CONFIG_CC_VERSION_TEXT="{cc_text}"\nCONFIG_GCC_VERSION=1\n')
    dummy = tmp / "none"
    return Kernel(
        spec="test", name=f"test-{release}", release=release, package_version="test",
        vmlinuz=dummy, modules_dir=dummy, config=config, headers=headers or dummy,
        symvers=dummy, kallsyms=dummy,
    )  # fmt: skip


# --- parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "command", "version"),
    [
        (BULLSEYE_5_10, "gcc-10", (10, 2, 1)),
        (BOOKWORM_6_1, "gcc-12", (12, 2, 0)),
        (TRIXIE_6_12, "x86_64-linux-gnu-gcc-14", (14, 2, 0)),
        (TRIXIE_BPO_7_3, "x86_64-linux-gnu-gcc-14", (14, 2, 0)),
        ("gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "gcc", (12, 2, 0)),  # host `gcc --version`
        ("gcc (GCC) 13.2.1 20230801", "gcc", (13, 2, 1)),
        (f'"{BOOKWORM_6_1}"', "gcc-12", (12, 2, 0)),  # quotes as in the .config line
    ],
)
def test_parse_gcc_texts(text: str, command: str, version: tuple[int, ...]) -> None:
    cc = parse_cc_version_text(text)
    assert (cc.family, cc.command, cc.version, cc.major) == ("gcc", command, version, version[0])


def test_parse_clang_text() -> None:
    cc = parse_cc_version_text("Debian clang version 16.0.6 (15)")
    assert (cc.family, cc.major) == ("clang", 16)


@pytest.mark.parametrize("text", ["", "n", "12.2.0", "ld (GNU Binutils) 2.40", "gcc-12"])
def test_parse_rejects_non_compiler_text(text: str) -> None:
    with pytest.raises(ToolchainError, match="cannot read a gcc version"):
        parse_cc_version_text(text)


# --- decision ---------------------------------------------------------------------------


def test_same_major_builds_on_host() -> None:
    host = _gcc("gcc (Debian 12.2.0-14+deb12u1) 12.2.0")
    assert suite_for(_gcc(BOOKWORM_6_1), host) is None


@pytest.mark.parametrize(
    ("kernel_text", "suite"),
    [(TRIXIE_BPO_7_3, "trixie"), (TRIXIE_6_12, "trixie"), (BULLSEYE_5_10, "bullseye")],
)
def test_other_major_needs_the_suite_that_ships_it(kernel_text: str, suite: str) -> None:
    host = _gcc("gcc (Debian 12.2.0-14+deb12u1) 12.2.0")
    assert suite_for(_gcc(kernel_text), host) == suite
    assert suite_for(_gcc(kernel_text), None) == suite


def test_host_gcc_14_builds_7x_on_host() -> None:
    assert suite_for(_gcc(TRIXIE_BPO_7_3), _gcc(TRIXIE_6_12)) is None
    assert suite_for(_gcc(BOOKWORM_6_1), _gcc(TRIXIE_6_12)) == "bookworm"


def test_unknown_gcc_major_and_clang_are_refused() -> None:
    with pytest.raises(ToolchainError, match="no Debian suite known to ship gcc-13"):
        suite_for(_gcc("gcc (GCC) 13.2.1 20230801"), None)
    with pytest.raises(ToolchainError, match="only gcc-built"):
        suite_for(_gcc("Debian clang version 16.0.6 (15)"), None)


def test_packages_per_suite() -> None:
    assert buildroot.packages_for("trixie")[:2] == ("gcc-14", "gcc")
    assert "dwarves" in buildroot.packages_for("bullseye")
    with pytest.raises(ToolchainError):
        buildroot.packages_for("hamm")


def _host_gcc_major() -> int | None:
    if shutil.which("gcc") is None:
        return None
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
    return parse_cc_version_text(out.stdout).major


@pytest.mark.skipif(_host_gcc_major() != 12, reason="host gcc is not gcc-12 (Debian bookworm)")
def test_select_bookworm_kernel_uses_host(tmp_path: Path) -> None:
    chosen = toolchain.select(_kernel(tmp_path, BOOKWORM_6_1, release="6.1.0-56-amd64"))
    assert (chosen.kind, chosen.root, chosen.gcc_major) == ("host", None, 12)
    assert chosen.description.startswith("host gcc")
    assert chosen.command(["make", "modules"], binds=[tmp_path]) == ["make", "modules"]


def test_select_without_cc_text_fails(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path, "")
    kernel.config.write_text("CONFIG_LIVEPATCH=y\n")
    with pytest.raises(ToolchainError, match="no CONFIG_CC_VERSION_TEXT"):
        toolchain.select(kernel)


# --- wrapper ----------------------------------------------------------------------------


def _fake_headers(base: Path) -> Path:
    """The layout of Debian's three headers packages extracted under one dir."""
    arch = base / "usr/src/linux-headers-7.3.4+deb13-amd64"
    common = base / "usr/src/linux-headers-7.3.4+deb13-common"
    kbuild = base / "usr/lib/linux-kbuild-7.3.4+deb13"
    for d in (arch, common, kbuild / "scripts", kbuild / "tools"):
        d.mkdir(parents=True)
    (arch / "Makefile").write_text(f"KBUILD_OUTPUT={arch}\ninclude {common}/Makefile\n")
    (arch / "scripts").symlink_to("../../lib/linux-kbuild-7.3.4+deb13/scripts")
    (arch / "tools").symlink_to("../../lib/linux-kbuild-7.3.4+deb13/tools")
    return arch


def test_expand_binds_follows_headers_links(tmp_path: Path) -> None:
    arch = _fake_headers(tmp_path / "k")
    moddir = tmp_path / "mod"
    moddir.mkdir()
    binds = buildroot.expand_binds([arch, moddir, moddir / "."])
    kbuild = tmp_path / "k/usr/lib/linux-kbuild-7.3.4+deb13"
    assert set(binds) == {
        arch, moddir, tmp_path / "k/usr/src/linux-headers-7.3.4+deb13-common",
        kbuild / "scripts", kbuild / "tools",
    }  # fmt: skip
    assert buildroot.expand_binds([tmp_path, arch]) == [tmp_path]  # nested binds collapse


def test_wrap_shape_and_missing_bind(tmp_path: Path) -> None:
    argv = buildroot.wrap(tmp_path / "root", ["make", "-j2"], [tmp_path])
    assert argv[:3] == ["unshare", "--mount", "--fork"]
    assert argv[-4:] == [str(tmp_path), "--", "make", "-j2"]
    with pytest.raises(ToolchainError, match="no such path"):
        buildroot.wrap(tmp_path, ["true"], [tmp_path / "absent"])


def _root_runnable() -> str | None:
    """Why a build root cannot be used here, or None."""
    if os.geteuid() != 0:
        return "build roots need root (unshare --mount, chroot, mmdebstrap --mode=root)"
    for tool in ("mmdebstrap", "unshare", "chroot", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)


# Headers of the newest 7.x kernel in trixie-backports, fetched with a private apt root.
# (harness/kernels/apt.py will do this for real; this keeps the test independent of it.)
def _fetch_7x_headers(work: Path) -> Path:
    apt = work / "apt"
    for d in (
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ):
        (apt / d).mkdir(parents=True)  # fmt: skip
    (apt / "var/lib/dpkg/status").write_text("")
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (apt / "etc/apt/sources.list").write_text(
        f"deb [signed-by={keyring}] {debian_mirror()} trixie-backports main\n"
    )
    opts = ["-o", f"Dir={apt}", "-o", f"Dir::State::status={apt}/var/lib/dpkg/status"]
    assert _run(["apt-get", *opts, "-q", "update"]).returncode == 0

    def depends(package: str) -> list[str]:
        out = _run(["apt-cache", *opts, "depends", package]).stdout
        return re.findall(r"^\s+Depends: (\S+)$", out, re.MULTILINE)

    headers = [p for p in depends("linux-headers-amd64/trixie-backports")
               if re.fullmatch(r"linux-headers-7\.\S+-amd64", p)]  # fmt: skip
    assert headers, "no 7.x linux-headers in trixie-backports"
    wanted = [headers[0]] + [
        p for p in depends(headers[0]) if p.startswith(("linux-headers-", "linux-kbuild-"))
    ]
    debs = work / "debs"
    debs.mkdir()
    got = _run(["apt-get", *opts, "-q", "download", *wanted], cwd=debs)
    assert got.returncode == 0, got.stderr
    tree = work / "tree"
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    arch = tree / "usr/src" / headers[0]
    # The arch Makefile names the common tree (and, in 7.x, itself) by /usr/src paths.
    makefile = arch / "Makefile"
    makefile.write_text(makefile.read_text().replace("/usr/src/", f"{tree}/usr/src/"))
    return arch


@pytest.mark.slow_build
def test_build_hello_module_in_trixie_root_against_7x(tmp_path: Path) -> None:
    if reason := _root_runnable():
        pytest.skip(reason)
    arch = _fetch_7x_headers(tmp_path)
    release = arch.name.removeprefix("linux-headers-")
    kernel = _kernel(tmp_path, "", headers=arch, release=release)
    kernel.config.write_text((arch / ".config").read_text())

    chosen = toolchain.select(kernel)  # creates the trixie root when it is not cached
    assert (chosen.kind, chosen.gcc_major) == ("buildroot", 14)
    assert chosen.root is not None and chosen.root.name == "trixie"
    assert chosen.description.startswith("buildroot trixie x86_64-linux-gnu-gcc-14 ")

    moddir = tmp_path / "hello"
    moddir.mkdir()
    (moddir / "hello.c").write_text(HELLO_C)
    (moddir / "Kbuild").write_text("obj-m := hello.o\n")
    make = ["make", "-C", str(arch), f"M={moddir}", *chosen.make_args(), "modules"]
    done = _run(chosen.command(make, binds=[arch, moddir]), cwd=moddir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BTF [M]" in done.stdout  # pahole ran (dwarves is in the root)
    info = _run(["modinfo", "-F", "vermagic", str(moddir / "hello.ko")])
    assert info.stdout.startswith(f"{release} ")


@pytest.mark.slow_build
def test_wrapper_runs_inside_trixie_root(tmp_path: Path) -> None:
    if reason := _root_runnable():
        pytest.skip(reason)
    root = buildroot.ensure_buildroot("trixie")
    shared = tmp_path / "shared"
    shared.mkdir()
    chosen = toolchain.Toolchain("buildroot", "test", "gcc-14", root, 14)
    assert _run(chosen.command(["true"])).returncode == 0
    assert _run(chosen.command(["false"])).returncode == 1
    script = f"test -r /proc/self/status && test -x /usr/bin/pahole && pwd > {shared}/out"
    done = _run(chosen.command(["sh", "-c", script], binds=[shared]), cwd=shared)
    assert done.returncode == 0, done.stderr
    assert (shared / "out").read_text().strip() == str(shared)  # same path, same cwd
    release = _run(chosen.command(["sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME"]))
    assert release.stdout.strip() == "trixie"
