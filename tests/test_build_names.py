"""Module directories with hostile names build from a copy under a harness-chosen name, so
nothing the user named reaches make (`$(shell ...)` once ran on the host, spaces and quotes
broke kbuild). Real kbuild against the Debian 6.1 headers; no VM."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from harness.build.modules import build_module, build_name, source_files
from harness.errors import BuildError
from harness.kernels.kernel import Kernel
from harness.suite.samples import load_sample

SAMPLE = Path(__file__).resolve().parent.parent / "modules" / "kernel_clone"
HOSTILE = ["x$(shell touch PWNED)", "sp ace\"q';semi", "$$(touch PWNED) `touch PWNED`"]


def _module(parent: Path, name: str) -> Path:
    path = parent / name
    shutil.copytree(SAMPLE, path)
    return path


def _pwned(*bases: Path) -> list[Path]:
    return [p for base in bases for p in base.rglob("PWNED")]


def test_hostile_directory_names_build_and_run_nothing(
    klp_kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    mods = tmp_path / "mods"
    dirs = [_module(mods, name) for name in HOSTILE]
    # `inner/..` is named ".." by the path: its build dir must not be the kernel's parent.
    (mods / "dotdot" / "inner").mkdir(parents=True)
    for file in SAMPLE.iterdir():
        shutil.copy(file, mods / "dotdot")
    dirs.append(mods / "dotdot" / "inner" / "..")
    builds = cache / "builds" / klp_kernel.name
    for path in dirs:
        built = build_module(klp_kernel, load_sample(path))
        assert built.ko.is_file() and built.ko.parent.parent.parent == builds
        assert set(built.converted) == {"vmlinux.kernel_clone,0", "vmlinux.do_exit,0"}
    assert not _pwned(tmp_path, klp_kernel.headers, Path(os.path.realpath(klp_kernel.headers)))
    names = sorted(p.name for p in builds.iterdir() if p.is_dir())
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names), names
    assert len(names) == len(dirs)


def test_cache_dir_kbuild_cannot_take_is_refused(
    klp_kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "my $(shell touch PWNED) cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuildError) as info:
        build_module(klp_kernel, load_sample(SAMPLE))
    message = str(info.value)
    assert "kbuild needs a plain path" in message and "\n" not in message
    assert not _pwned(tmp_path, klp_kernel.headers)


# --- the copy: no kernel needed -----------------------------------------------------------


def test_plain_names_keep_their_name() -> None:
    sample = load_sample(SAMPLE)
    assert build_name(sample) == "kernel_clone"


def test_symlink_inside_is_copied_as_content(tmp_path: Path) -> None:
    mod = _module(tmp_path, "m")
    (mod / "sub").mkdir()
    (mod / "sub" / "extra.h").write_text("/* x */\n")
    (mod / "alias.h").symlink_to("sub/extra.h")
    names = [name for name, _ in source_files(mod)]
    assert "alias.h" in names and os.path.join("sub", "extra.h") in names


@pytest.mark.parametrize("target", ["/etc/hostname", "..", "sub"])
def test_symlink_out_of_the_module_or_to_a_dir_is_refused(tmp_path: Path, target: str) -> None:
    mod = _module(tmp_path, "m")
    (mod / "sub").mkdir()
    (mod / "link").symlink_to(target)
    with pytest.raises(BuildError, match=r"link: a symbolic link to .*not to a regular file"):
        source_files(mod)


def test_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    mod = _module(tmp_path, "m")
    os.mkfifo(mod / "pipe.c")  # copytree would block reading it forever
    with pytest.raises(BuildError, match=r"pipe\.c: not a regular file or directory"):
        source_files(mod)


def test_names_the_harness_writes_are_refused(tmp_path: Path) -> None:
    mod = _module(tmp_path, "m")
    (mod / "klp").mkdir()
    with pytest.raises(BuildError, match=r"the harness writes klp into the build"):
        source_files(mod)
