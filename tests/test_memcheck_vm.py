"""The in-memory check of klp relocations on a real kernel: a test module with persistent
references to init_once,2 verifies in memory; the same module with its klp symbol's
position edited after conversion (`,2` to `,3` in .strtab, same length) still loads, yet
its step fails naming the relocation and both addresses. Nothing mocked (vm marker)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from harness.build.modules import BuiltModule, build_with_requirements, builds_dir
from harness.fileio import atomic_write_bytes
from harness.kernels.kernel import Kernel
from harness.suite.results import FAIL, PASS, ModuleResult
from harness.suite.samples import Expectation, Sample, find_sample
from harness.suite.steps import GuestSteps
from harness.suite.transcript import Transcript, transcript_file
from harness.vm.guest import Guest

pytestmark = pytest.mark.vm

MODULE_DIR = Path(__file__).parent / "data" / "memcheck" / "init_once_ref"
ORIGINAL = b".klp.sym.vmlinux.init_once,2\0"
TAMPERED = b".klp.sym.vmlinux.init_once,3\0"
VERIFIED = (
    "2 of 2 klp relocations verified in memory (0 in freed init sections, 0 patched by the kernel)"
)


def load_tampered(
    steps: GuestSteps, sample: Sample, expectation: Expectation, built: BuiltModule, dir_name: str
) -> tuple[ModuleResult, Transcript]:
    """`built` with its klp symbol's position edited `,2` -> `,3` in .strtab (same length),
    loaded; the insmod must succeed (the kernel resolves the 3rd init_once)."""
    data = built.ko.read_bytes()
    assert data.count(ORIGINAL) == 1
    tampered = builds_dir(steps.kernel) / dir_name / built.ko.name
    tampered.parent.mkdir(exist_ok=True)
    atomic_write_bytes(tampered, data.replace(ORIGINAL, TAMPERED))
    result, transcript = steps.run(sample, expectation, replace(built, ko=tampered))
    insmod = next(c for c in transcript.commands if c.role == "insmod")
    assert insmod.status == 0  # the kernel took it
    return result, transcript


def test_tampered_sympos_loads_but_fails_in_memory(
    klp_guest: Guest, klp_kernel: Kernel, klp_results_dir: Path
) -> None:
    sample = find_sample(str(MODULE_DIR))
    expectation = sample.expectation(klp_kernel)
    if expectation.outcome != "pass":
        pytest.skip(f"{klp_kernel.name}: {expectation.reason}")
    built, _ = build_with_requirements(klp_kernel, sample)
    steps = GuestSteps(klp_guest, klp_kernel)

    result, transcript = steps.run(sample, expectation, built)
    transcript.save(transcript_file(klp_results_dir, klp_kernel.name, "memcheck_ref"))
    assert result.outcome == PASS, result.reason
    assert result.memory == VERIFIED

    result, transcript = load_tampered(steps, sample, expectation, built, "memcheck-tampered")
    transcript.save(transcript_file(klp_results_dir, klp_kernel.name, "memcheck_tampered"))
    assert result.outcome == FAIL
    assert "klp relocation mismatch in memory" in result.reason
    assert ".klp.rela.vmlinux..data+0x0 (vmlinux.init_once,3)" in result.reason
    live, meant = re.findall(r"0x[0-9a-f]{16}", result.reason)[:2]
    assert live != meant
    assert "the conversion meant vmlinux.init_once,2" in result.reason


def test_tampered_sample_sympos_2_fails_in_memory(
    klp_guest: Guest, klp_kernel: Kernel, klp_results_dir: Path
) -> None:
    """The shipped sample itself: its .data copy of init_once,2 outlives init, so the same
    `,2` -> `,3` edit is caught in memory, besides the address its init printed."""
    sample = find_sample("sympos_2")
    expectation = sample.expectation(klp_kernel)
    if expectation.outcome != "pass":
        pytest.skip(f"{klp_kernel.name}: {expectation.reason}")
    built, _ = build_with_requirements(klp_kernel, sample)
    steps = GuestSteps(klp_guest, klp_kernel)
    result, _ = steps.run(sample, expectation, built)
    assert result.outcome == PASS, result.reason
    assert result.memory.startswith("1 of 2 klp relocations verified in memory (1 in freed init")

    result, transcript = load_tampered(
        steps, sample, expectation, built, "memcheck-tampered-sympos_2"
    )
    transcript.save(transcript_file(klp_results_dir, klp_kernel.name, "sympos_2_tampered"))
    assert result.outcome == FAIL
    mismatch = re.search(
        r"klp relocation mismatch in memory: \.klp\.rela\.vmlinux\.\.data\+0x0 "
        r"\(vmlinux\.init_once,3\): memory points at (0x[0-9a-f]{16}), "
        r"the conversion meant vmlinux\.init_once,2 at (0x[0-9a-f]{16})",
        result.reason,
    )
    assert mismatch, result.reason
    assert mismatch.group(1) != mismatch.group(2)
    print(f"tampered sympos_2: {result.reason}")
