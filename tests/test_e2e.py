"""End to end on a real kernel: every sample built, converted, loaded in one booted guest.

Nothing is mocked: a real Debian kernel under QEMU (virtme-ng), real insmod, the kernel's
own dmesg and /proc/kallsyms. `--kernel SPEC` picks other kernels; `-m "not vm"` deselects.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from harness.kernels.kernel import Kernel
from harness.klp.symbols import SymbolTable
from harness.suite.results import GOOD, PASS, ModuleResult
from harness.suite.samples import all_samples
from harness.vm.guest import Guest

pytestmark = pytest.mark.vm


def _vmlinux(text: str) -> list[tuple[str, int, str]]:
    """(name, address, type) of every vmlinux symbol (no [module] column), in file order."""
    rows = (line.split() for line in text.splitlines())
    return [(r[2], int(r[0], 16), r[1]) for r in rows if len(r) == 3]


def test_recovered_symbol_table_matches_guest_kallsyms(
    klp_kernel: Kernel, klp_guest: Guest
) -> None:
    """The table the converter counts sympos in is the kernel's, up to one KASLR shift."""
    recovered = _vmlinux(klp_kernel.kallsyms.read_text())
    guest = _vmlinux(klp_guest.kallsyms())
    assert [n for n, _, _ in recovered] == [n for n, _, _ in guest]
    shifts = {g - r for (_, r, t), (_, g, _) in zip(recovered, guest, strict=True) if t in "Tt"}
    assert len(shifts) == 1, f"text symbols moved by {len(shifts)} different offsets"


@pytest.mark.parametrize("sample", [s.name for s in all_samples()])
def test_sample(sample: str, klp_step: Callable[[str], ModuleResult]) -> None:
    result = klp_step(sample)
    assert result.outcome in GOOD, f"{result.outcome}: {result.reason}"
    if result.outcome == PASS:
        assert any("/proc/kallsyms:" in line for line in result.evidence)
        # every klp relocation accounted for in memory: verified, freed with init, or patched
        counts = re.fullmatch(
            r"(\d+) of (\d+) klp relocations verified in memory "
            r"\((\d+) in freed init sections, (\d+) patched by the kernel\)",
            result.memory,
        )
        assert counts, result.memory
        verified, total, init, patched = map(int, counts.groups())
        assert verified + init + patched == total


def test_kernel_clone_address_is_kallsyms_address(
    klp_step: Callable[[str], ModuleResult], klp_guest: Guest
) -> None:
    result = klp_step("kernel_clone")
    assert result.outcome == PASS, result.reason
    table = SymbolTable.parse(klp_guest.kallsyms(), "guest /proc/kallsyms")
    (only,) = table.candidates("kernel_clone")
    assert f"klp-harness: resolved kernel_clone,0 0x{only.address:016x}" in result.evidence
