"""The KVM/TCG choice without a VM: one cached probe per host and kernel image, kept until
something changes, overridable by the environment."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.vm import accel
from harness.vm.accel import Accel


@pytest.fixture
def probe_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache, a stand-in /dev/kvm (a file the test can replace) and a bin/ for a
    fake qemu: only for the verdict-cache logic, the real probe runs in the VM tests."""
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    (tmp_path / "kvm").write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(tmp_path / "kvm"))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    accel.reset_cache()
    yield tmp_path
    accel.reset_cache()


def fake_qemu(host: Path, script: str) -> None:
    qemu = host / "bin" / "qemu-system-x86_64"
    qemu.write_text(f"#!/bin/sh\necho run >> {host / 'runs'}\n{script}\n")
    qemu.chmod(0o755)


def probes(host: Path) -> int:
    runs = host / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def choose(vmlinuz: Path, timeout: float = accel.PROBE_TIMEOUT) -> accel.AccelChoice:
    accel.reset_cache()  # a new process: only the cache dir remembers
    return accel.choose_accel(vmlinuz, timeout)


def test_accel_probe_runs_once_and_env_overrides(
    probe_host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_qemu(probe_host, "echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'")
    first = accel.choose_accel(probe_host / "a")
    assert (first.accel, first.reason) == ("kvm", "a KVM probe boot ran to its expected panic")
    assert accel.choose_accel(probe_host / "b") is first and probes(probe_host) == 1
    accel.reset_cache()
    monkeypatch.setenv(accel.ENV_VAR, "tcg")
    assert accel.choose_accel(probe_host / "c").accel == "tcg"
    assert probes(probe_host) == 1


def test_every_choice_is_an_accel(probe_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu(probe_host, "echo 'Kernel panic'")
    image = probe_host / "vmlinuz"
    choices = [choose(image), choose(image)]  # probed, then the cached verdict
    monkeypatch.setenv(accel.ENV_VAR, " TCG")
    choices.append(choose(image))
    assert [(type(c.accel), c.accel) for c in choices] == [
        (Accel, Accel.KVM),
        (Accel, Accel.KVM),
        (Accel, Accel.TCG),
    ]
    # A verdict naming no accelerator of ours is no verdict: probe again.
    monkeypatch.delenv(accel.ENV_VAR)
    verdicts = probe_host / "cache" / "accel" / accel.VERDICTS
    data = json.loads(verdicts.read_text())
    verdicts.write_text(json.dumps({k: {**v, "accel": "hvf"} for k, v in data.items()}))
    assert choose(image).accel is Accel.KVM and probes(probe_host) == 2


def test_a_hanging_kvm_verdict_is_kept_until_something_changes(probe_host: Path) -> None:
    fake_qemu(probe_host, "sleep 30")
    image = probe_host / "vmlinuz"
    image.write_bytes(b"kernel")
    start = time.monotonic()
    hung = choose(image, timeout=1)
    assert (hung.accel, probes(probe_host)) == ("tcg", 1) and time.monotonic() - start >= 1
    assert hung.reason == "a KVM guest did not finish a 1 s probe boot (hangs)"

    start = time.monotonic()
    again = choose(image, timeout=1)
    assert time.monotonic() - start < 0.5 and probes(probe_host) == 1
    assert again.accel == "tcg"
    stamp = r"cached verdict from \d{4}-\d\d-\d\d \d\d:\d\d: "
    assert re.fullmatch(stamp + re.escape(hung.reason), again.reason)

    # Each part of the key, changed, means a new probe; unchanged, the verdict stands.
    (probe_host / "kvm").unlink()
    (probe_host / "kvm").write_bytes(b"")  # /dev/kvm recreated (a reboot, a module reload)
    choose(image, timeout=1)
    assert probes(probe_host) == 2
    fake_qemu(probe_host, "echo 'Kernel panic - not syncing: VFS'")  # qemu upgraded
    assert choose(image, timeout=1).accel == "kvm" and probes(probe_host) == 3
    image.write_bytes(b"another kernel")
    assert choose(image, timeout=1).reason.startswith("a KVM probe") and probes(probe_host) == 4
    other = probe_host / "vmlinuz-2"
    other.write_bytes(b"kernel 2")
    choose(other, timeout=1)
    assert choose(image, timeout=1).reason.startswith("cached verdict")  # several kept
    assert probes(probe_host) == 5


def test_a_damaged_verdict_file_means_a_new_probe(probe_host: Path) -> None:
    fake_qemu(probe_host, "echo 'Kernel panic'")
    choose(probe_host / "vmlinuz")
    verdicts = probe_host / "cache" / "accel" / accel.VERDICTS
    assert json.loads(verdicts.read_text())
    verdicts.write_text("{not json")
    assert choose(probe_host / "vmlinuz").accel == "kvm" and probes(probe_host) == 2
    assert choose(probe_host / "vmlinuz").reason.startswith("cached verdict")


def test_no_kvm_device_is_tcg_without_a_probe(probe_host: Path) -> None:
    fake_qemu(probe_host, "echo 'Kernel panic'")
    (probe_host / "kvm").unlink()
    choice = choose(probe_host / "vmlinuz")
    assert (choice.accel, choice.reason) == ("tcg", f"{probe_host / 'kvm'} does not exist")
    assert probes(probe_host) == 0
