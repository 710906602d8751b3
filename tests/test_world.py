"""Convert the world (marker `world`, run only when `-m` names it): every module of a Debian
kernel image package, all its references to vmlinux made klp relocations, each checked by the
independent loader oracle (tests/oracle/): the relocated images must be identical, or the
difference must be explained by tests/oracle/allowed.py. The kernels must be cached
(`klp-harness kernels fetch SPEC`, KLP_HARNESS_CACHE); a kernel that is not is skipped, saying so.

    pytest -q -m world tests/test_world.py
"""

from __future__ import annotations

import pytest
from oracle.allowed import explain
from oracle.loader import KernelTable
from oracle.world import run_world

from harness.kernels.acquire import cached

pytestmark = pytest.mark.world

KERNELS = ("debian:bookworm", "debian:trixie-backports")


@pytest.mark.parametrize("spec", KERNELS)
def test_every_module_converts_to_identical_images(spec: str) -> None:
    kernel = cached(spec)
    if kernel is None:
        pytest.skip(f"{spec} is not cached: `klp-harness kernels fetch {spec}` first")
    result = run_world(kernel)
    table = KernelTable(kernel.kallsyms.read_text(errors="surrogateescape"))
    assert result.modules > 1000, f"only {result.modules} modules under {kernel.modules_dir}"
    failures = result.failures()
    assert not failures, f"the converter refused modules: {failures}"
    unexplained = [
        f"{name}: {diff.kind}: {diff.detail}"
        for name, diff in result.differences()
        if explain(diff, table) is None
    ]
    assert not unexplained, "\n".join(unexplained[:20])
    assert result.converted > result.modules * 0.9
    assert result.relocations > 100_000
    checked = [o for o in result.outcomes if not o.differences]
    assert sum(o.klp_applied for o in checked) == sum(o.relocations for o in checked)
