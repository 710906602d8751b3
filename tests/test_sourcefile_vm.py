"""File-based positions in a booted guest: sympos_2 (expect.toml `init_once = "fs/proc/inode.c"`)
and sympos_last (KLP_SYMPOS_FILE(init_once, "net/socket.c") in its source) load on the kernel
under test (`--kernel SPEC`, default debian:bookworm) at the position the kernel's linked vmlinux
gives that file, and the guest lists a function of that file right after the address."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from harness.kernels.kernel import Kernel
from harness.kernels.sourcefiles import file_position
from harness.klp.symbols import SymbolTable
from harness.suite.results import PASS, ModuleResult

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(
    ("sample", "file", "neighbour"),
    [
        ("sympos_2", "fs/proc/inode.c", r"(__pfx_)?(proc_\w+|use_pde|pde_\w+|close_pdeo)"),
        ("sympos_last", "net/socket.c", r"(__pfx_)?(kernel_sendpage_locked|kernel_sock_\w+)"),
    ],
)
def test_the_file_chooses_the_position(
    sample: str,
    file: str,
    neighbour: str,
    klp_kernel: Kernel,
    klp_step: Callable[[str], ModuleResult],
) -> None:
    if klp_kernel.config_value("LIVEPATCH") == "n":
        pytest.skip("the livepatch guard refuses every converted module here")
    table = SymbolTable.load(klp_kernel.kallsyms)
    position = file_position(klp_kernel, table, "init_once", file)
    result = klp_step(sample)
    assert result.outcome == PASS, result.reason
    reported = [m for e in result.evidence if (m := re.search(r"resolved init_once,(\d+) ", e))]
    assert [int(m.group(1)) for m in reported] == [position]
    assert any(re.fullmatch(rf"[0-9a-f]{{16}} [tT] {neighbour}", e) for e in result.evidence)
