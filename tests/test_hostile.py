"""The guest is hostile: modules that panic, hang or oops, and guest commands that plant
traps in the shared directory, on a real kernel under QEMU (tests/hostile/README.md).

What must hold: the step that misbehaved fails with its cause and is blamed alone (later
modules run in a new boot and pass); the host never reads or writes through what the
guest planted, and no planted link is left in the results.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.console import Printer
from harness.kernels.kernel import Kernel
from harness.suite.results import FAIL, NOT_RUN, PASS, ModuleResult, RunResults
from harness.suite.runner import run
from harness.suite.samples import find_sample

pytestmark = pytest.mark.vm

HOSTILE = Path(__file__).parent / "hostile"


def _by_sample(results: RunResults) -> dict[str, ModuleResult]:
    (kernel,) = results.kernels
    return {m.sample: m for m in kernel.modules}


def _run(kernel: Kernel, paths: list[Path], out: Path, max_boots: int) -> RunResults:
    samples = [find_sample(str(p)) for p in paths]
    return run([kernel.spec], samples, out, printer=Printer(), max_boots=max_boots)


def test_crash_and_hang_blame_only_the_step(klp_kernel: Kernel, tmp_path: Path) -> None:
    paths = [HOSTILE / n for n in ("panic_init", "hang_init", "oops_init")]
    results = _run(klp_kernel, [*paths, Path("kernel_clone")], tmp_path, max_boots=4)
    got = _by_sample(results)
    panic, hang, oops = got["panic_init"], got["hang_init"], got["oops_init"]
    assert panic.outcome == FAIL
    assert "Kernel panic - not syncing: klp_hostile_panic: panic in init" in panic.reason
    assert any("Kernel panic" in line for line in panic.evidence)
    assert hang.outcome == FAIL
    assert "the guest stopped during this step" in hang.reason and "within" in hang.reason
    assert "hang_init insmod" in hang.reason
    assert any("hang_init insmod: insmod" in line for line in hang.evidence)
    assert oops.outcome == FAIL
    assert "BUG: kernel NULL pointer dereference" in oops.reason
    assert any("BUG: kernel NULL pointer dereference" in line for line in oops.evidence)
    # The innocent module after them ran in a boot of its own, and passed.
    assert got["kernel_clone"].outcome == PASS, got["kernel_clone"].reason
    logs = {m.console_log for m in got.values()}
    assert len(logs) == 3, logs  # panic, hang: each ended a boot; oops and kernel_clone share one
    assert not any(m.outcome == NOT_RUN for m in got.values())


def _attacks() -> list[dict[str, Any]]:
    attacks: list[dict[str, Any]] = tomllib.loads((HOSTILE / "share_attacks.toml").read_text())[
        "attack"
    ]
    return attacks


def _attack_module(where: Path, attack: dict[str, Any], secret: Path, target: Path) -> Path:
    """A copy of share_attack/ whose check is the attack (then one harmless command)."""
    module = where / str(attack["name"])
    shutil.copytree(HOSTILE / "share_attack", module)
    cmd = attack["cmd"].replace("{secret}", str(secret)).replace("{target}", str(target))
    with open(module / "expect.toml", "a") as handle:
        handle.write(f"\n[[expect.check]]\ncmd = '''{cmd}'''\n\n[[expect.check]]\ncmd = 'true'\n")
    return module


def _links_under(top: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            mode = (Path(root) / name).lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                found.append(Path(root) / name)
    return found


def test_shared_dir_traps_never_reach_the_host(klp_kernel: Kernel, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("klp-harness-host-secret-6b1f0c\n")
    secret.chmod(0o600)
    target = tmp_path / "host-target-never-written"
    attacks = _attacks()
    modules = [_attack_module(tmp_path / "modules", a, secret, target) for a in attacks]
    out = tmp_path / "results"
    results = _run(klp_kernel, modules, out, max_boots=len(attacks) + 1)
    got = _by_sample(results)
    for attack in attacks:
        result = got[attack["name"]]
        if attack["reason"]:
            assert result.outcome == FAIL, (attack["name"], result.reason)
            assert "shared dir" in result.reason, result.reason
            assert re.search(attack["reason"], result.reason), result.reason
        else:
            assert result.outcome == PASS, (attack["name"], result.reason)
    assert not target.exists()
    assert secret.stat().st_mode & 0o777 == 0o600
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"klp-harness-host-secret" not in path.read_bytes(), path
    assert _links_under(out) == []
