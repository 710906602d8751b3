"""The real default kernel, fetched once into a private cache, then damaged the ways a disk,
an interrupted download or a killed run damage it; each time the CLI must say what is wrong in
one line and repair it. Needs the mirror (and a few minutes): behind the `vm` marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.kernels.spec import default_spec

pytestmark = pytest.mark.vm

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _env(cache: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # kallsyms-finder lives beside the interpreter
    return {**os.environ, "KLP_HARNESS_CACHE": str(cache), "PATH": f"{bindir}:{os.environ['PATH']}"}


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli.main", *args]


@pytest.fixture(scope="session")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache holding the default kernel, fetched through the mirror once."""
    cache = tmp_path_factory.mktemp("damage") / "cache"
    proc = subprocess.run(
        _argv("kernels", "fetch", "-q", default_spec()),
        env=_env(cache),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return cache


@pytest.fixture
def cache(fetched: Path, tmp_path: Path) -> Path:
    """A copy of the fetched cache for one test to damage (hard links: damage replaces files)."""
    copy = tmp_path / "cache"
    subprocess.run(["cp", "-al", str(fetched), str(copy)], check=True)
    return copy


@pytest.fixture
def cli(cache: Path) -> Cli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_argv(*args), env=_env(cache), capture_output=True, text=True)

    return run


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "kernels").iterdir() if p.is_dir() and p.name[0] != "."]
    return entry


def _replace(path: Path, data: bytes) -> None:
    """New content in a new inode: the copy shares the fetched cache's by hard links."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def _meta(entry: Path) -> dict[str, object]:
    data = json.loads((entry / "kernel.json").read_text())
    assert isinstance(data, dict)
    return data


def test_truncated_vmlinuz(cache: Path, cli: Cli) -> None:
    entry = _entry(cache)
    vmlinuz = entry / str(_meta(entry)["vmlinuz"])
    whole = vmlinuz.stat().st_size
    _replace(vmlinuz, vmlinuz.read_bytes()[:1_000_000])
    said = f"{vmlinuz.relative_to(entry)}: 1000000 bytes, {whole} when installed"
    verify = cli("kernels", "verify")
    assert verify.returncode == 20 and verify.stdout == f"{entry.name}: damaged: {said}\n"
    fetch = cli("kernels", "fetch", default_spec())
    assert fetch.returncode == 0, fetch.stderr
    assert f"cached kernel damaged ({said}), installing it again" in fetch.stderr
    assert vmlinuz.stat().st_size == whole
    assert cli("kernels", "verify").returncode == 0


def test_garbage_kernel_json(cache: Path, cli: Cli) -> None:
    entry = _entry(cache)
    _replace(entry / "kernel.json", b"garbage{")
    info = cli("kernels", "info", "--cached-only", default_spec())
    assert info.returncode == 20 and info.stderr.count("\n") == 1
    assert "damaged (kernel.json: not valid JSON)" in info.stderr
    fetch = cli("kernels", "fetch", default_spec())
    assert fetch.returncode == 0, fetch.stderr
    assert (
        "cached kernel damaged (kernel.json: not valid JSON), installing it again" in fetch.stderr
    )
    info = cli("kernels", "info", "--cached-only", default_spec())
    assert info.returncode == 0 and "CONFIG_LIVEPATCH" in info.stdout


def test_truncated_deb_is_fetched_again(cache: Path, cli: Cli) -> None:
    entry = _entry(cache)
    debs = _meta(entry)["debs"]
    assert isinstance(debs, dict)
    name = max(debs, key=lambda d: debs[d][0])  # the image, the biggest
    deb = cache / "debs" / name
    whole = deb.read_bytes()
    _replace(deb, whole[: len(whole) // 2])
    verify = cli("kernels", "verify")
    assert verify.returncode == 20 and f"{deb}: size {len(whole) // 2}" in verify.stdout
    _replace(entry / "kernel.json", b"{}")  # the entry must be installed again from it
    fetch = cli("kernels", "fetch", default_spec())
    assert fetch.returncode == 0, fetch.stderr
    said = f"size {len(whole) // 2}, apt's record says {len(whole)}"
    assert f"{name}: cached file damaged ({said}), fetching again" in fetch.stderr
    assert "downloading 1 packages" in fetch.stderr
    assert deb.read_bytes() == whole
    assert cli("kernels", "verify").returncode == 0


def test_killed_fetch_leaves_nothing_behind(cache: Path) -> None:
    kernels = cache / "kernels"
    proc = subprocess.Popen(
        _argv("kernels", "fetch", "--refresh", default_spec()),
        env=_env(cache),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("klp-harness: extracting linux-image"):
            break
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = [p for p in kernels.iterdir() if p.name.startswith(".") and p.is_dir()]
    time.sleep(5)  # the orphaned tar under the killed dpkg-deb finishes its archive
    fetch = subprocess.run(
        _argv("kernels", "fetch", default_spec()), env=_env(cache), capture_output=True, text=True
    )
    assert fetch.returncode == 0, fetch.stderr
    assert f"removed {left}, left by an interrupted run" in fetch.stderr
    assert not [p for p in kernels.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_refresh_drops_and_fetches_again(cache: Path, cli: Cli) -> None:
    entry = _entry(cache)
    before = (entry / "kernel.json").stat().st_ino
    resolution = next((cache / "resolved").glob("*.json"))
    resolved_at = json.loads(resolution.read_text())["time"]
    fetch = cli("kernels", "fetch", "--refresh", default_spec())
    assert fetch.returncode == 0, fetch.stderr
    assert f"dropped {entry}" in fetch.stderr
    assert (entry / "kernel.json").stat().st_ino != before
    assert json.loads(resolution.read_text())["time"] > resolved_at
    assert "downloading" not in fetch.stderr  # the .debs are sound: kept
