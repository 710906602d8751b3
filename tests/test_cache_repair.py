"""A damaged kernel cache is detected and repaired: fake Debian packages (real .debs, real
dpkg-deb), real files damaged on disk, real processes killed with SIGKILL. No mirror needed;
tests/test_cache_damage.py does the same on the real default kernel."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
from fakedebs import ABI, bzimage, fake_recover, fake_resolution

from harness.cache import cache_key
from harness.cli.main import main
from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import acquire as acq
from harness.kernels import kallsyms, resolve
from harness.kernels.apt import AptRoot
from harness.kernels.resolve import Resolution
from harness.kernels.spec import parse_spec
from harness.kernels.verify import DamagedEntry, debian_entry, vmlinuz_problem

SPEC = f"debian:{ABI}"


def quiet() -> Printer:
    """Progress off (the repairs are warnings, said all the same), on the stderr of now."""
    return Printer(quiet=True)


@pytest.fixture
def res(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Resolution:
    """A fake kernel resolved (as apt would) and installed in a fresh cache."""
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kallsyms, "recover", fake_recover)
    resolution = fake_resolution(tmp_path / "cache")
    resolve.save_resolution(parse_spec(SPEC), resolution)
    acq._install(None, resolution, parse_spec(SPEC), quiet())
    return resolution


def _meta(entry: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((entry / "kernel.json").read_text()))


def _replace(path: Path, data: bytes) -> None:
    """New content through a new inode, as a damaged download or an editor would leave it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_install_records_the_manifest(res: Resolution) -> None:
    meta = _meta(res.entry)
    files = meta["files"]
    for rel in (
        f"root/boot/vmlinuz-{ABI}",
        f"root/boot/config-{ABI}",
        "kallsyms",
        f"root/usr/src/linux-headers-{ABI}/Makefile",
        f"root/usr/src/linux-headers-{ABI}c/Makefile",
        f"root/usr/src/linux-headers-{ABI}/Module.symvers",
    ):
        assert rel in files, rel
    assert files[f"root/boot/vmlinuz-{ABI}"][0] == len(bzimage())
    assert meta["debs"] == {p.deb: [p.size, p.sha256] for p in res.packages}
    assert debian_entry(res.entry) == meta
    assert acq.cached(SPEC) is not None


def _garbage(entry: Path) -> None:
    (entry / "kernel.json").write_text("garbage{")


def _no_headers(entry: Path) -> None:
    meta = _meta(entry)
    del meta["headers"]
    (entry / "kernel.json").write_text(json.dumps(meta))


def _escaping(entry: Path) -> None:
    meta = _meta(entry)
    meta["vmlinuz"] = "../../../etc/passwd"
    (entry / "kernel.json").write_text(json.dumps(meta))


def _truncated_vmlinuz(entry: Path) -> None:
    _replace(entry / f"root/boot/vmlinuz-{ABI}", bzimage(cut=100))


def _edited_config(entry: Path) -> None:
    path = entry / f"root/boot/config-{ABI}"
    _replace(path, path.read_bytes().replace(b"=y", b"=n"))


def _no_table(entry: Path) -> None:
    (entry / "kallsyms").unlink()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_garbage, "kernel.json: not valid JSON"),
        (_no_headers, "kernel.json: 'headers' missing or not a string"),
        (_escaping, "kernel.json: 'vmlinuz' is not a path inside the entry"),
        (_truncated_vmlinuz, f"root/boot/vmlinuz-{ABI}: 1180 bytes, 1280 when installed"),
        (_edited_config, f"root/boot/config-{ABI}: sha256 differs from the one recorded"),
        (_no_table, "kallsyms: missing"),
    ],
)
def test_damaged_entry_is_installed_again(
    res: Resolution, capsys: pytest.CaptureFixture[str], damage: Any, said: str
) -> None:
    damage(res.entry)
    with pytest.raises(DamagedEntry, match=said.replace("(", r"\(")):
        debian_entry(res.entry)
    with pytest.raises(KernelError, match="damaged") as err:  # `kernels info --cached-only`
        acq.cached(SPEC)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    kernel = acq._install(None, res, parse_spec(SPEC), quiet())
    assert f"cached kernel damaged ({said}" in capsys.readouterr().err
    assert kernel.vmlinuz.read_bytes() == bzimage()
    assert kernel.config_value("LIVEPATCH") == "y"
    assert debian_entry(res.entry) is not None
    assert not [p.name for p in res.entry.parent.iterdir() if p.name.startswith(".")]


def test_cli_reports_damage_in_one_line(
    res: Resolution, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernels", "verify"]) == 0
    assert capsys.readouterr().out == f"{res.entry.name}: ok (6 files, 2 .debs)\n"
    _garbage(res.entry)
    assert main(["kernels", "info", "--cached-only", SPEC]) == 20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kernel.json: not valid JSON" in err
    assert main(["kernels", "verify", SPEC]) == 20
    out, err = capsys.readouterr()
    assert out == f"{res.entry.name}: damaged: kernel.json: not valid JSON\n"
    assert err.startswith("klp-harness: 1 of 1 cached kernel(s) damaged")
    assert main(["kernels", "list"]) == 0  # the declared kernels are not in this cache


def test_verify_checks_the_debs(res: Resolution, capsys: pytest.CaptureFixture[str]) -> None:
    deb = res.entry.parent.parent / "debs" / res.packages[1].deb
    data = bytearray(deb.read_bytes())
    data[200] ^= 0xFF
    _replace(deb, bytes(data))
    assert main(["kernels", "verify"]) == 20
    out = capsys.readouterr().out
    assert out == f"{res.entry.name}: damaged: {deb}: sha256 differs from the install's record\n"
    deb.unlink()  # a .deb no longer cached is no damage: it is fetched when needed
    assert main(["kernels", "verify"]) == 0


def test_incomplete_entry_and_damaged_source_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    (tmp_path / "kernels/debian-9.9.0-1-amd64_1.0-1/root").mkdir(parents=True)
    build = tmp_path / "source-builds/source-6.1-livepatch-0123456789ab"
    build.mkdir(parents=True)
    (build / ".complete").touch()
    (build / "kernel.json").write_text("[1, 2")
    assert main(["kernels", "verify"]) == 20
    assert capsys.readouterr().out.splitlines() == [
        "debian-9.9.0-1-amd64_1.0-1: incomplete (an interrupted install; the next fetch redoes it)",
        "source-6.1-livepatch-0123456789ab: damaged: kernel.json: not valid JSON",
    ]


class FakeApt:
    """Stands in for the mirror: `download` copies the good .debs kept aside."""

    def __init__(self, root: Path, stash: Path, damage: bool = False) -> None:
        self.root, self.stash, self.damage = root, stash, damage
        self.calls: list[list[tuple[str, str]]] = []

    def download(
        self,
        wanted: list[tuple[str, str]],
        dest: Path,
        *,
        printer: Printer | None = None,
        size: int = 0,
    ) -> None:
        self.calls.append(wanted)
        for name, version in wanted:
            deb = dest / f"{name}_{version}_amd64.deb"
            shutil.copy(self.stash / deb.name, deb)
            if self.damage:
                os.truncate(deb, 100)


@pytest.mark.parametrize(
    ("size", "said"),
    [(500, "size 500, apt's record says {size}"), (None, "sha256 differs from apt's record")],
)
def test_damaged_deb_is_fetched_again(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    size: int | None,
    said: str,
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kallsyms, "recover", fake_recover)
    res = fake_resolution(tmp_path / "cache")
    stash = tmp_path / "stash"
    shutil.copytree(tmp_path / "cache/debs", stash)
    image = res.packages[0]
    deb = tmp_path / "cache/debs" / image.deb
    data = deb.read_bytes()
    _replace(deb, data[:size] if size else data[:-10] + b"0123456789")
    mirror = FakeApt(tmp_path / "apt", stash)
    kernel = acq._install(cast(AptRoot, mirror), res, parse_spec(SPEC), quiet())
    err = capsys.readouterr().err
    said = said.format(size=image.size)
    assert f"{image.deb}: cached file damaged ({said}), fetching again" in err
    assert mirror.calls == [[(image.name, image.version)]]
    assert deb.read_bytes() == data and kernel.vmlinuz.read_bytes() == bzimage()


def test_damaged_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    res = fake_resolution(tmp_path / "cache")
    stash = tmp_path / "stash"
    shutil.move(tmp_path / "cache/debs", stash)
    mirror = FakeApt(tmp_path / "apt", stash, damage=True)
    with pytest.raises(KernelError, match=r"download of linux-image-x_1.0-1_amd64.deb is damaged"):
        acq._install(cast(AptRoot, mirror), res, parse_spec(SPEC), quiet())
    assert not (tmp_path / "cache/debs/linux-image-x_1.0-1_amd64.deb").exists()


def test_entry_from_before_manifests_gets_one(res: Resolution) -> None:
    meta = _meta(res.entry)
    legacy = {k: v for k, v in meta.items() if k not in ("files", "debs")}
    (res.entry / "kernel.json").write_text(json.dumps(legacy))
    assert debian_entry(res.entry) is not None
    assert _meta(res.entry)["files"] == meta["files"]  # recorded now, from the files as they are
    (res.entry / "kernel.json").write_text(json.dumps(legacy))
    _truncated_vmlinuz(res.entry)  # what it can check without a manifest: the boot header
    with pytest.raises(DamagedEntry, match="truncated, 1180 bytes where its boot header says 1280"):
        debian_entry(res.entry)


def test_warm_acquire_is_cheap_and_calls_no_apt(
    res: Resolution, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess on a warm cache: {args}")

    monkeypatch.setattr("harness.kernels.apt.subprocess.run", no_subprocess)
    monkeypatch.setattr("harness.kernels.acquire.subprocess.run", no_subprocess)
    kernel = acq.acquire(SPEC, printer=quiet())
    assert kernel.release == ABI and kernel.vmlinuz.read_bytes() == bzimage()


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (bzimage(), ""),
        (bzimage(cut=1), "truncated, 1279 bytes where its boot header says 1280"),
        (b"\0" * 4096, "no x86 boot header (no 'HdrS' magic at 0x202)"),
        (b"MZ", "2 bytes, too short for a kernel image"),
        (bzimage() + b"\0" * 512, ""),  # padding after the image is fine
    ],
)
def test_vmlinuz_header(tmp_path: Path, data: bytes, said: str) -> None:
    path = tmp_path / "vmlinuz"
    path.write_bytes(data)
    assert vmlinuz_problem(path) == (f"vmlinuz: {said}" if said else "")


# -- kernels built from source: their kernel.json is read as carefully ----------------------


def test_damaged_source_build_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.kernels import source_build as kbuild
    from harness.kernels.source import SourceTree, fragments_hash
    from harness.kernels.spec import fragment_paths

    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    tree = SourceTree(tmp_path / "linux", "linux-source-6.1", "6.1.1-1")
    source_id = "linux-source-6.1=6.1.1-1"
    monkeypatch.setattr(kbuild, "_tree_and_label", lambda spec, printer: (tree, "6.1", source_id))
    (tmp_path / "sources/linux-source-6.1_6.1.1-1/linux-source-6.1").mkdir(parents=True)
    (tmp_path / "resolved").mkdir()
    (tmp_path / "resolved/source-6.1.json").write_text('{"version": "6.1.1-1", "time": 0}')
    digest = fragments_hash(fragment_paths("livepatch"), kbuild.RECIPE, source_id)[:12]
    entry = tmp_path / f"source-builds/source-6.1-livepatch-{digest}"
    bzimage_path = entry / "obj/arch/x86/boot/bzImage"
    bzimage_path.parent.mkdir(parents=True)
    for rel in ("obj/.config", "obj/Module.symvers", "kallsyms"):
        (entry / rel).write_text("x\n")
    meta = {"name": "n", "release": "6.1.1-klp", "package_version": "v", "packages": []}
    builds: list[bool] = []

    def build(*args: Any) -> None:  # what _build_entry leaves when it succeeds
        builds.append(bzimage_path.exists())
        bzimage_path.write_bytes(bzimage())
        (entry / "kernel.json").write_text(json.dumps(meta))
        (entry / ".complete").touch()

    monkeypatch.setattr(kbuild, "_build_entry", build)
    spec = parse_spec("source:6.1:livepatch")
    build()
    assert kbuild.source_kernel(spec).release == "6.1.1-klp" and builds == [False]
    (entry / "kernel.json").write_text('{"name": 1}')
    with pytest.raises(KernelError, match=r"kernel\.json: 'name' missing or not a string"):
        kbuild.cached_source_kernel(spec)
    assert kbuild.source_kernel(spec).name == "n" and builds == [False, True]
    assert "cached build damaged (kernel.json: 'name' missing" in capsys.readouterr().err
    bzimage_path.write_bytes(bzimage(cut=10))  # make would keep it: removed before the build
    assert kbuild.source_kernel(spec).vmlinuz == bzimage_path and builds[-1] is False
    assert kbuild.check_build(entry) == ""


# -- one cache-key rule, one printer ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("debian:bookworm", "debian_bookworm"),
        ("6.1.158-1", "6.1.158-1"),
        ("1:2.3+deb12u1~bpo", "1_2.3+deb12u1~bpo"),
        ("local:/home/u/linux tree", "local__home_u_linux_tree"),
        ("..", "_."),
        (".hidden", "_hidden"),
        ("", "_"),
    ],
)
def test_cache_key(text: str, key: str) -> None:
    assert cache_key(text) == key
    assert re.fullmatch(r"[A-Za-z0-9_+~-][A-Za-z0-9.+~_-]*", cache_key(text))


def test_cache_names_follow_the_one_rule(res: Resolution) -> None:
    assert res.entry.name == f"debian-{ABI}_1.0-1"
    spec = parse_spec("debian:bookworm-backports")
    assert resolve.resolution_file(spec).name == "debian_bookworm-backports.json"


def test_install_lines_name_their_kernel(res: Resolution) -> None:
    """With -j 2 two kernels install at once: every line says which one it is about."""
    out = io.StringIO()
    printer = Printer(out, tty=False).for_kernel("k1")
    _garbage(res.entry)
    acq._install(None, res, parse_spec(SPEC), printer)
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("klp-harness: [k1] ") for line in lines)
    assert f"[k1] warning: {res.entry}: cached kernel damaged" in lines[0]
    assert any(line.endswith("[k1] extracting linux-image-x_1.0-1_amd64.deb") for line in lines)
