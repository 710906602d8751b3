"""The clang side of an LTO kernel: the build variables its config fragment asks for, and the
toolchain chosen from its CONFIG_CC_VERSION_TEXT (the host's clang-19 with LLVM=-19)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.build import toolchain
from harness.build.toolchain import clang_toolchain, parse_cc_version_text
from harness.errors import KernelError, ToolchainError
from harness.kernels.kernel import Kernel
from harness.kernels.source_build import make_variables
from harness.kernels.spec import fragment_paths

# CONFIG_CC_VERSION_TEXT of the source:7.3:lto build (kernels/configs/lto.config).
LTO_7_3 = "Debian clang version 19.1.7 (3~deb12u1)"


def test_lto_fragment_asks_for_llvm() -> None:
    fragments = fragment_paths("lto")
    assert make_variables(fragments) == ["LLVM=-19"]
    assert make_variables(fragment_paths("livepatch")) == []


def test_bad_make_variable_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("# klp-harness-make: LLVM=-19 ; rm -rf /\nCONFIG_LIVEPATCH=y\n")
    with pytest.raises(KernelError, match=r"bad.config: klp-harness-make: ';' is not VAR=value"):
        make_variables([bad])


def _kernel(tmp: Path, cc_text: str) -> Kernel:
    config = tmp / "config"
    config.write_text(f'CONFIG_CC_VERSION_TEXT="{cc_text}"\nCONFIG_CC_IS_CLANG=y\n')
    dummy = tmp / "none"
    return Kernel(
        spec="test", name="test-lto", release="7.3.4-klp-lto", package_version="test",
        vmlinuz=dummy, modules_dir=dummy, config=config, headers=dummy,
        symvers=dummy, kallsyms=dummy,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("clang-19") is None, reason="ci/setup.sh installs clang-19")
def test_clang_kernel_gets_host_clang_with_llvm_suffix(tmp_path: Path) -> None:
    chosen = toolchain.select(_kernel(tmp_path, LTO_7_3))
    assert (chosen.kind, chosen.cc, chosen.make_vars) == ("host", "clang-19", ("LLVM=-19",))
    assert "clang version 19" in chosen.description
    # every make of a module build gets LLVM=-19; other commands stay as they are
    assert chosen.command(["make", "-C", "/k", "M=/m"]) == ["make", "LLVM=-19", "-C", "/k", "M=/m"]
    assert chosen.command(["clang-19", "--version"]) == ["clang-19", "--version"]
    assert chosen.make_args() == ["LLVM=-19"]


def test_clang_major_missing_is_named() -> None:
    cc = parse_cc_version_text("Debian clang version 97.0.1 (1)")
    with pytest.raises(ToolchainError, match=r"no clang-97 on the host \(Debian packages clang-97"):
        clang_toolchain(cc)
