"""A sample converted with `convert --kernel debian:trixie-backports -o X.ko.xz` (Debian 7.x
ships its modules xz-compressed) loads in that kernel's guest through the kernel's own
decompressor: finit_module(MODULE_INIT_COMPRESSED_FILE), CONFIG_MODULE_DECOMPRESS. Its
dmesg lines show that kernel_clone() and do_exit() (klp relocations) were reached."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.build.modules import build_module
from harness.cli.main import main
from harness.kernels.acquire import acquire
from harness.paths import MODULES_DIR
from harness.suite.samples import load_sample
from harness.vm.boot import boot

pytestmark = pytest.mark.vm

SPEC = "debian:trixie-backports"
# finit_module with MODULE_INIT_COMPRESSED_FILE (4): the kernel decompresses the file itself
# (kmod >= 31 does this; the guest's busybox insmod would decompress in user space).
FINIT = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || syscall(SYS_finit_module, fd, "", 4)) {
		perror(argv[1]);
		return 1;
	}
	return 0;
}
"""


@pytest.mark.slow_build  # a trixie build root for the gcc-14 kernel
def test_ko_xz_loads_through_the_kernels_decompressor(
    tmp_path: Path, klp_results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc (a static finit_module helper for the guest)")
    kernel = acquire(SPEC)
    assert kernel.config_value("MODULE_DECOMPRESS") == "y"
    assert kernel.config_value("MODULE_COMPRESS_XZ") == "y"
    built = build_module(kernel, load_sample(MODULES_DIR / "kernel_clone"))
    share = tmp_path / "share"
    share.mkdir()
    out = share / "klp_kernel_clone.ko.xz"
    assert main(["convert", str(built.raw_ko), "--kernel", SPEC, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.strip().endswith("guarded by klp_enable_patch, xz-compressed"), said
    (tmp_path / "finit.c").write_text(FINIT)
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(share / "finit"), str(tmp_path / "finit.c")],
        check=True,
    )
    log = klp_results_dir / f"console-{kernel.name}-ko-xz.log"
    with boot(kernel, log, share_dir=share) as guest:
        loaded = guest.run(f"/klp/share/finit /klp/share/{out.name}")
        assert loaded.ok, loaded.output
        dmesg = guest.run("dmesg").output
        assert "started by kernel_clone has exited" in dmesg, dmesg[-2000:]
        assert "Unknown symbol" not in dmesg
        assert guest.run("rmmod klp_kernel_clone").ok
        # the same file through busybox's insmod, which decompresses it in user space
        assert guest.run(f"insmod /klp/share/{out.name}").ok
        assert guest.run("rmmod klp_kernel_clone").ok


@pytest.mark.source_kernel
def test_convert_signs_with_the_build_key_of_a_sig_force_kernel(
    tmp_path: Path, klp_results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`convert --kernel source:6.1:sig-force` signs with that build's certs/signing_key.pem
    unasked: the kernel (CONFIG_MODULE_SIG_FORCE) loads the output and refuses the same module
    converted unsigned."""
    spec = "source:6.1:sig-force"
    kernel = acquire(spec)
    assert kernel.config_value("MODULE_SIG_FORCE") == "y"
    built = build_module(kernel, load_sample(MODULES_DIR / "kernel_clone"))
    share = tmp_path / "share"
    share.mkdir()
    signed, unsigned = share / "signed" / "klp_kernel_clone.ko", share / "klp_kernel_clone.ko"
    signed.parent.mkdir()
    assert main(["convert", str(built.raw_ko), "--kernel", spec, "-o", str(signed)]) == 0
    assert capsys.readouterr().out.strip().endswith("certs/signing_key.x509)")
    # unsigned: the same conversion from a --system-map/--symvers target (no kernel, no key)
    target = ["--system-map", str(kernel.kallsyms), "--symvers", str(kernel.symvers)]
    assert main(["convert", str(built.raw_ko), *target, "-o", str(unsigned)]) == 0
    assert "refuses unsigned" not in capsys.readouterr().err  # no kernel named, no warning
    log = klp_results_dir / f"console-{kernel.name}-convert-signed.log"
    with boot(kernel, log, share_dir=share) as guest:
        refused = guest.run(f"insmod /klp/share/{unsigned.name}")
        assert not refused.ok and "Key was rejected" in refused.output
        loaded = guest.run(f"insmod /klp/share/signed/{signed.name}")
        assert loaded.ok, loaded.output
        assert "started by kernel_clone has exited" in guest.run("dmesg").output
        assert guest.run("rmmod klp_kernel_clone").ok
