"""Other architectures end to end: kernels cross-built from linux-source-7.3 for arm64 and
ppc64le, booted under QEMU TCG through `vng --arch` on a Debian root of that architecture,
samples cross-built, converted and loaded.

Marked `cross_arch` (minutes: three kernel builds when the cache is cold). The whole sample
suite runs on these kernels through the same fixtures as every kernel:
`pytest tests/test_e2e.py --kernel source:7.3:livepatch:arm64` (or `...:ppc64le`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.build.modules import BuiltModule, build_module, builds_dir
from harness.kernels.acquire import acquire
from harness.kernels.kernel import Kernel
from harness.suite.samples import load_sample
from harness.vm.boot import boot

pytestmark = [pytest.mark.cross_arch, pytest.mark.vm]
SAMPLES = Path(__file__).parent.parent / "modules"
BRANCH_RANGE = 128 << 20  # what a CALL26/JUMP26 reaches: +-128 MiB
BOOTS = 4  # the 2 GiB region puts a module within branch range about one boot in 16


def _vmlinux(text: str) -> list[tuple[str, int]]:
    rows = (line.split() for line in text.splitlines())
    return [(r[2], int(r[0], 16)) for r in rows if len(r) == 3 and r[1] != "?"]


def _per_name(rows: list[tuple[str, int]]) -> dict[str, list[int]]:
    """Each name's addresses in table order: what a sympos counts in."""
    out: dict[str, list[int]] = {}
    for name, address in rows:
        out.setdefault(name, []).append(address)
    return out


@pytest.mark.parametrize(
    ("spec", "machine", "image"),
    [
        ("source:7.3:livepatch:arm64", "aarch64", "Image"),
        ("source:7.3:livepatch:ppc64le", "ppc64le", "vmlinux"),
    ],
)
def test_cross_kernel_boots_with_its_symbol_table(
    tmp_path: Path, spec: str, machine: str, image: str
) -> None:
    """The cross-built image boots on its architecture's root; the offline table (arm64:
    recovered from the Image and placed by System.map's _text; ppc64le: System.map) holds
    the guest's /proc/kallsyms entries, every name's addresses in the same order."""
    kernel = acquire(spec)
    assert kernel.arch == spec.rsplit(":", 1)[1] and kernel.vmlinuz.name == image
    assert kernel.config_value("LIVEPATCH") == "y"
    with boot(kernel, tmp_path / "console.log") as guest:
        assert guest.accel == "tcg"
        assert guest.run("uname -m").output.strip() == machine
        assert guest.run("uname -r").output.strip() == kernel.release
        assert guest.run("test -d /sys/kernel/livepatch").ok
        live = _vmlinux(guest.kallsyms())
    offline = _vmlinux(kernel.kallsyms.read_text())
    assert _per_name(offline) == {n: a for n, a in _per_name(live).items() if n in dict(offline)}
    missing = {n for n, _ in live} - {n for n, _ in offline}
    assert missing <= {"__nosave_begin", "__nosave_end"}, missing  # `?` in System.map


def _load_once(kernel: Kernel, built: BuiltModule, log: Path) -> tuple[int, int, str, bool]:
    """One boot: (module .text, kernel_clone's address, dmesg, whether it has a .plt)."""
    with boot(kernel, log, modules=builds_dir(kernel)) as guest:
        assert guest.run(f"insmod {guest.path(built.ko)}").ok
        sections = f"/sys/module/{built.module}/sections"
        text = int(guest.run(f"cat {sections}/.text").output, 16)
        has_plt = guest.run(f"test -e {sections}/.plt").ok
        dmesg = guest.run("dmesg").output
        target = dict(_vmlinux(guest.kallsyms()))["kernel_clone"]
        assert guest.run(f"rmmod {built.module}").ok
    return text, target, dmesg, has_plt


def test_far_module_calls_vmlinux_through_a_plt(tmp_path: Path) -> None:
    """On the KASLR kernel (2 GiB module region) the module lands beyond a branch's reach of
    vmlinux; its converted CALL26 to kernel_clone still reaches it, through the module PLT
    whose slot the loader reserved for the .klp.rela section. The placement is random (a
    boot may put it near): up to BOOTS boots, every one must pass, one must be far."""
    kernel = acquire("source:7.3:kaslr:arm64")
    assert kernel.config_value("RANDOMIZE_MODULE_REGION_FULL") == "y"
    built = build_module(kernel, load_sample(SAMPLES / "kernel_clone"))
    distances = []
    for attempt in range(BOOTS):
        text, target, dmesg, has_plt = _load_once(kernel, built, tmp_path / f"c{attempt}.log")
        assert "2G module region forced by RANDOMIZE_MODULE_REGION_FULL" in dmesg
        assert has_plt, "the module has no .plt section"
        assert f"klp-harness: resolved kernel_clone,0 0x{target:016x}" in dmesg
        assert "started by kernel_clone has exited" in dmesg
        distances.append(abs(target - text))
        if distances[-1] > BRANCH_RANGE:
            return
    pytest.fail(f"no boot of {BOOTS} put the module out of branch range: {distances}")
