"""Architectures as data (kernels/arches/arches.toml): specs that name one, per-architecture
fragments, boot images, cross toolchains, sample conditions and report labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.build.toolchain import cross_toolchain, parse_cc_version_text
from harness.errors import ExpectationError, KernelError, ToolchainError
from harness.kernels.arch import arch_of_config, arch_of_machine, arches, find_arch
from harness.kernels.spec import fragment_paths, load_declared, parse_spec
from harness.kernels.verify import image_problem
from harness.paths import CONFIGS_DIR
from harness.report.model import KernelRow
from harness.suite.samples import _condition

DATA = Path(__file__).parent / "data" / "arm64"
# The first 64 bytes of an arm64 Image built by `klp-harness kernels fetch
# source:7.3:livepatch:arm64` (its header: code0/1, text_offset, image_size, ..., magic).
IMAGE_HEAD = DATA / "Image.head"


def test_table() -> None:
    table = arches()
    assert {"x86_64", "arm64"} <= set(table)
    arm = table["arm64"]
    assert (arm.kbuild, arm.vng, arm.elf_machine, arm.target) == ("arm64", "arm64", 183, "Image")
    assert arm.make_vars() == ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    assert find_arch("x86_64").make_vars() == []  # native: kbuild's defaults
    assert arch_of_machine(183) is arm and arch_of_machine(3) is None
    assert arch_of_config({"CONFIG_ARM64": "y"}) is arm
    assert arch_of_config({"CONFIG_X86_64": "y"}) is table["x86_64"]
    with pytest.raises(KernelError, match=r"unknown architecture 'mips'.*arm64"):
        find_arch("mips")


def test_specs_carry_the_architecture() -> None:
    s = parse_spec("source:7.3:livepatch:arm64")
    assert (s.ref, s.config, s.arch, s.text) == ("7.3", "livepatch", "arm64", s.text)
    assert s.text == "source:7.3:livepatch:arm64"
    host = parse_spec("source:7.3:livepatch")
    assert host.arch == "x86_64" and host.text == "source:7.3:livepatch"  # cache keys unchanged
    assert parse_spec("source:7.3:livepatch:x86_64").text == "source:7.3:livepatch"
    tree = parse_spec("source:./linux:kaslr:arm64")
    assert tree.arch == "arm64" and tree.config == "kaslr" and tree.text.endswith(":kaslr:arm64")
    with pytest.raises(KernelError, match="bad source spec"):
        parse_spec("source:7.3:livepatch:arm64:extra")
    with pytest.raises(KernelError, match=r"'source:7.3:livepatch:mips': unknown architecture"):
        parse_spec("source:7.3:livepatch:mips")


def test_fragments_per_architecture() -> None:
    base, own = fragment_paths("livepatch", "arm64")
    assert base == CONFIGS_DIR / "arm64" / "base.config"  # never the x86 base
    assert own == CONFIGS_DIR / "livepatch.config"  # shared when the arch has none of its own
    assert fragment_paths("kaslr", "arm64")[1] == CONFIGS_DIR / "arm64" / "kaslr.config"
    assert fragment_paths("livepatch")[0] == CONFIGS_DIR / "base.config"
    with pytest.raises(KernelError, match="no config 'kaslr' for x86_64"):
        fragment_paths("kaslr")
    with pytest.raises(KernelError, match="no config 'arm64'"):
        fragment_paths("arm64", "arm64")  # an architecture's directory is not a config
    x86 = (CONFIGS_DIR / "base.config").read_text()
    arm = base.read_text()
    assert "CONFIG_SERIAL_8250" in x86 and "CONFIG_SERIAL_8250" not in arm
    assert "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y" in arm and "CONFIG_VIRTIO_MMIO=y" in arm


def test_declared_arm64_kernels() -> None:
    declared = {d.name: parse_spec(d.spec) for d in load_declared()}
    assert declared["source-7.3-livepatch-arm64"].arch == "arm64"
    assert declared["source-7.3-kaslr-arm64"].config == "kaslr"


def test_boot_images(tmp_path: Path) -> None:
    assert image_problem(IMAGE_HEAD, "arm64") == ""
    bad = tmp_path / "Image"
    bad.write_bytes(IMAGE_HEAD.read_bytes()[:0x38] + b"XXXX" + bytes(4))
    assert "no arm64 Image header" in image_problem(bad, "arm64")
    assert "too short" in image_problem(IMAGE_HEAD, "x86_64")  # a bzImage has a setup header


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="ci/setup.sh installs it")
def test_cross_toolchain() -> None:
    arm = find_arch("arm64")
    kernel_cc = parse_cc_version_text("aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0")
    chain = cross_toolchain(arm, kernel_cc)
    assert chain.cc == "aarch64-linux-gnu-gcc" and chain.gcc_major == 12
    assert chain.command(["make", "-C", "x"])[:3] == ["make", *arm.make_vars()]
    assert chain.make_args() == arm.make_vars()
    clang = parse_cc_version_text("Debian clang version 19.1.7 (3)")
    with pytest.raises(ToolchainError, match="only gcc"):
        cross_toolchain(arm, clang)


def test_sample_condition_on_architecture() -> None:
    cond = _condition({"arch": "x86_64"}, "t")
    assert cond.arch == ("x86_64",)
    assert _condition({"arch": ["x86_64", "arm64"]}, "t").arch == ("x86_64", "arm64")
    with pytest.raises(ExpectationError, match=r"`when\.arch` is an architecture"):
        _condition({"arch": "vax"}, "t")


def test_report_label_names_another_architecture() -> None:
    row = KernelRow(spec="source:7.3:livepatch:arm64", release="7.3.4-klp-livepatch", arch="arm64")
    assert row.label == "7.3.4-klp-livepatch arm64"
    assert KernelRow(spec="s", release="7.3.4-klp-livepatch", arch="x86_64").label.endswith("patch")


def test_cross_build_root_is_its_own() -> None:
    from harness.build.buildroot import buildroot_path

    assert buildroot_path("trixie").name == "trixie"
    assert buildroot_path("trixie", "aarch64-linux-gnu-").name == "trixie-aarch64-linux-gnu"


@pytest.mark.slow_build
def test_cross_toolchain_from_a_build_root() -> None:
    """A kernel built with a gcc the host has no cross compiler of (Debian's 7.3 arm64:
    aarch64-linux-gnu-gcc 14): the trixie root with gcc-aarch64-linux-gnu builds for it."""
    kernel_cc = parse_cc_version_text("aarch64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0")
    chain = cross_toolchain(find_arch("arm64"), kernel_cc)
    assert chain.kind == "buildroot" and chain.gcc_major == 14 and chain.root is not None
    assert chain.root.name == "trixie-aarch64-linux-gnu"
    assert "aarch64-linux-gnu-gcc" in chain.description


def test_ppc64le_row_and_its_table_from_system_map(tmp_path: Path) -> None:
    ppc = find_arch("ppc64le")
    assert (ppc.kbuild, ppc.vng, ppc.elf_machine, ppc.target) == (
        "powerpc",
        "ppc64el",
        21,
        "vmlinux",
    )
    assert ppc.symbols == "system-map" and find_arch("arm64").symbols == "image"
    from harness.kernels.kallsyms import from_system_map, read

    lines = [f"c00000000000{i:04x} T f{i}\n" for i in range(1200)]
    system_map = tmp_path / "System.map"
    system_map.write_text("c000000000000000 ? __nosave_begin\n" + "".join(lines))
    rec = from_system_map(system_map, tmp_path / "kallsyms")
    assert rec.count == 1200 and read(rec.path)[0].name == "f0"  # the linker's `?` marks dropped


def test_a_truncated_arm64_image_is_a_damaged_build(tmp_path: Path) -> None:
    """An arm64 Image has no size in its header: the size its build recorded catches a cut."""
    import json

    from harness.kernels.source_build import check_build

    entry = tmp_path / "source-7.3-livepatch-arm64-0123"
    for name in ("obj/.config", "obj/Module.symvers", "kallsyms"):
        (entry / name).parent.mkdir(parents=True, exist_ok=True)
        (entry / name).write_text("")
    image = entry / "obj/arch/arm64/boot/Image"
    image.parent.mkdir(parents=True)
    image.write_bytes(IMAGE_HEAD.read_bytes() + bytes(1000))
    meta: dict[str, object] = {"name": "n", "release": "7.3.4-klp", "package_version": "v"}
    meta["packages"] = []
    meta |= {"arch": "arm64", "image_bytes": 64 + 1000}
    (entry / "kernel.json").write_text(json.dumps(meta))
    assert check_build(entry) == ""
    image.write_bytes(image.read_bytes()[:500])
    assert "not the 1064 bytes the build wrote" in check_build(entry)
    (entry / "kernel.json").write_text(json.dumps(meta | {"arch": "vax"}))
    assert "unknown architecture 'vax'" in check_build(entry)
