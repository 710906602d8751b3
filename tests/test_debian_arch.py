"""Debian's prebuilt kernels of another architecture (arm64): specs, the per-architecture apt
root, resolution on apt data recorded from the mirror (tests/data/debian-arm64), the symbol
table placed by the headers' link addresses, and the runner's verdict on such a kernel.

The real fetch (~200 MB from the mirror, into a temporary cache, a few minutes) is marked
`cross_arch`, hidden by default:  .venv/bin/pytest -m cross_arch tests/test_debian_arch.py
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from btf_data import BTF_SYMBOLS, GUESSED, tiny_elf
from fakedebs import make_deb

from harness.console import Printer
from harness.errors import KernelError
from harness.kernels import acquire as acq
from harness.kernels import kallsyms
from harness.kernels.anchors import link_addresses
from harness.kernels.apt import AptRoot, root_dir
from harness.kernels.kernel import Kernel
from harness.kernels.mirrors import find_mirrors, parse_deb822
from harness.kernels.resolve import Pkg, Resolution, resolve_in, save_resolution
from harness.kernels.spec import load_matrix, parse_spec
from harness.kernels.verify import digest
from harness.paths import KERNELS_DIR
from harness.suite.runner import Backend, BootedGuest, run_kernel
from harness.suite.samples import Sample, find_sample

DATA = Path(__file__).parent / "data" / "debian-arm64"
RECORDS = json.loads((DATA / "apt-records.json").read_text())
SOURCES = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Components: main
"""
ABI73 = "debian:7.3.4+deb13-arm64"
KIMAGE_VADDR = 0xFFFF800080000000  # arm64 _text, VA_BITS_MIN 48, 2G module region (6.5+)


# -- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal", "kind", "flavour", "arch"),
    [
        ("debian:bookworm:arm64", "debian:bookworm:arm64", "debian-suite", "arm64", "arm64"),
        ("debian:trixie-backports:arm64", None, "debian-suite", "arm64", "arm64"),
        ("debian:trixie-cloud:arm64", None, "debian-suite", "cloud-arm64", "arm64"),
        ("debian:bookworm:x86_64", "debian:bookworm", "debian-suite", "amd64", "x86_64"),
        ("debian:bookworm", None, "debian-suite", "amd64", "x86_64"),
        ("debian:7.3.4+deb13-arm64", None, "debian-abi", "arm64", "arm64"),
        (f"{ABI73}:arm64", ABI73, "debian-abi", "arm64", "arm64"),
        ("debian:6.12.117+deb13-arm64-16k", None, "debian-abi", "arm64-16k", "arm64"),
        ("debian:6.12.117+deb13-rt-arm64", None, "debian-abi", "rt-arm64", "arm64"),
        ("debian:6.1.0-56-cloud-amd64", None, "debian-abi", "cloud-amd64", "x86_64"),
    ],
)  # fmt: skip
def test_debian_specs_carry_the_architecture(
    text: str, normal: str | None, kind: str, flavour: str, arch: str
) -> None:
    spec = parse_spec(text)
    assert (spec.kind, spec.flavour, spec.arch) == (kind, flavour, arch)
    assert spec.text == (normal or text)
    if kind == "debian-abi":
        assert spec.abi == spec.text.removeprefix("debian:")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("debian:7.3.4+deb13-arm64:x86_64", "flavour arm64, for arm64, not x86_64"),
        ("debian:6.1.0-56-amd64:arm64", "flavour amd64, for x86_64, not arm64"),
        ("debian:bookworm:mips", "bad debian spec 'debian:bookworm:mips': unknown architecture"),
        ("debian:bookworm:", "unknown architecture ''"),
        ("debian:nosuch:arm64", "unknown suite or ABI 'nosuch'"),
    ],
)
def test_bad_debian_arch_specs(text: str, said: str) -> None:
    with pytest.raises(KernelError, match=said.replace("(", r"\(").replace("+", r"\+")):
        parse_spec(text)


def test_declared_debian_arm64_kernels() -> None:
    decls = load_matrix(KERNELS_DIR / "debian-arm64.toml")
    specs = [parse_spec(d.spec) for d in decls]
    assert [(s.release, s.backports, s.arch) for s in specs] == [
        ("bookworm", False, "arm64"),
        ("trixie", False, "arm64"),
        ("trixie", True, "arm64"),
    ]
    assert all("LIVEPATCH" in d.description for d in decls)
    assert all("HAVE_LIVEPATCH" in d.description for d in decls[:2])


# -- the apt root of each architecture ----------------------------------------------------------


def test_each_debian_arch_has_its_own_apt_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    assert root_dir() == tmp_path / "apt"  # the amd64 root stays where it always was
    assert root_dir("arm64") == tmp_path / "apt-arm64"
    mirrors = find_mirrors(parse_deb822(SOURCES))
    host = AptRoot(root_dir(), mirrors)
    arm = AptRoot(root_dir("arm64"), mirrors, "arm64")
    arm.setup()
    assert "APT::Architecture=amd64" in host.options()
    assert "APT::Architectures=amd64" in host.options()
    opts = arm.options({"trixie": 500})
    assert "APT::Architecture=arm64" in opts and "APT::Architectures=arm64" in opts
    assert not any("amd64" in o for o in opts)
    assert f"Dir::State={tmp_path}/apt-arm64/state" in opts


def test_setup_leaves_apts_binary_cache_valid(tmp_path: Path) -> None:
    """apt rebuilds pkgcache.bin (100 MB, 10-20 s) when its status or sources are newer: a
    second setup (every harness process does one) must not touch them."""
    apt = AptRoot(tmp_path / "apt-arm64", find_mirrors(parse_deb822(SOURCES)), "arm64")
    apt.setup()
    kept = [apt.root / "state/status", apt.root / "etc/sources.list", apt.root / "etc/preferences"]
    for path in kept:
        os.utime(path, (1_000_000, 1_000_000))
    apt.setup()
    assert [p.stat().st_mtime for p in kept] == [1_000_000] * 3


# -- resolution on recorded apt data ------------------------------------------------------------


@dataclass
class Recorded(AptRoot):
    """An apt root that answers `apt-cache show` from the records of the real one."""

    records: dict[str, Any] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def show(self, package: str, pins: dict[str, int] | None = None) -> dict[str, str] | None:
        key = f"{self.arch} {package}" + (f" {json.dumps(pins, sort_keys=True)}" if pins else "")
        self.asked.append(key)
        assert key in self.records, f"not recorded: {key}"
        rec: dict[str, str] | None = self.records[key]
        return rec


def recorded_roots(tmp_path: Path, records: dict[str, Any]) -> tuple[Recorded, Recorded]:
    mirrors = find_mirrors(parse_deb822(SOURCES))
    arm = Recorded(tmp_path / "apt-arm64", mirrors, "arm64", records=records)
    return arm, Recorded(tmp_path / "apt", mirrors, "amd64", records=records)


@pytest.mark.parametrize("text", sorted(RECORDS["resolved"]))
def test_resolution_on_recorded_apt_data(tmp_path: Path, text: str) -> None:
    arm, host = recorded_roots(tmp_path, RECORDS["records"])
    res = resolve_in(arm, parse_spec(text), host)
    want = RECORDS["resolved"][text]
    assert (res.abi, res.version) == (want["abi"], want["version"])
    assert [[p.name, p.version, p.arch] for p in res.packages] == want["packages"]
    assert all(p.sha256 and p.size for p in res.packages)
    # the host runs modpost and fixdep: the kbuild tools are the host's build, the rest arm64's
    arches = {p.name: p.arch for p in res.packages}
    assert [n for n, a in arches.items() if a == "amd64"] == [
        n for n in arches if n.startswith("linux-kbuild-")
    ]
    assert all(a in ("arm64", "all") for n, a in arches.items() if "kbuild" not in n)
    assert not any(k.startswith("amd64 linux-image") for k in host.asked)


def test_trixie_backports_image_is_a_meta_over_linux_binary(tmp_path: Path) -> None:
    arm, host = recorded_roots(tmp_path, RECORDS["records"])
    res = resolve_in(arm, parse_spec("debian:trixie-backports:arm64"), host)
    names = [p.name for p in res.packages]
    assert "linux-binary-7.3.4+deb13-arm64" in names  # the vmlinuz is there, signed
    assert "arm64 linux-binary-7.3.4+deb13-arm64-unsigned=7.3.4-1~bpo13+1" in arm.asked


def test_kbuild_of_the_kernels_arch_when_the_host_lacks_it(tmp_path: Path) -> None:
    records = dict(RECORDS["records"])
    key = "amd64 linux-kbuild-7.3.4+deb13=7.3.4-1~bpo13+1"
    records[f"arm64 {key.split(' ', 1)[1]}"] = {**records[key], "Architecture": "arm64"}
    records[key] = None
    arm, host = recorded_roots(tmp_path, records)
    res = resolve_in(arm, parse_spec("debian:trixie-backports:arm64"), host)
    assert {p.name: p.arch for p in res.packages}["linux-kbuild-7.3.4+deb13"] == "arm64"


# -- the symbol table, placed by link addresses -------------------------------------------------


def test_link_addresses_of_a_btf_vmlinux(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(tiny_elf(BTF_SYMBOLS))
    assert link_addresses(path) == {
        "__start_BTF": 0xFFFF80008208A000,
        "__stop_BTF": 0xFFFF8000826E4D6F,
        "btf_sock_ids": 0xFFFF8000826E7578,
    }
    path.write_bytes(b"\x7fELF\x01\x01" + bytes(100))
    with pytest.raises(KernelError, match="not a little-endian ELF64 file"):
        link_addresses(path)


def test_anchors_move_the_table_to_the_link_addresses(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(tiny_elf(BTF_SYMBOLS))
    anchors = link_addresses(path)
    shift = kallsyms.anchored_shift(GUESSED, anchors, tmp_path / "vmlinuz")
    assert (int(GUESSED[0][0], 16) + shift) % (1 << 64) == KIMAGE_VADDR  # _text where linked


def test_anchors_that_disagree_or_miss_are_refused(tmp_path: Path) -> None:
    where = tmp_path / "vmlinuz"
    with pytest.raises(KernelError, match="disagree"):
        kallsyms.anchored_shift(GUESSED, {"__start_BTF": 1 << 63, "__stop_BTF": 1 << 62}, where)
    with pytest.raises(KernelError, match="none of 1 anchor symbols"):
        kallsyms.anchored_shift(GUESSED, {"twice": 1 << 63}, where)  # twice in the table


# -- an arm64 entry installed from packages, and the runner's verdict ---------------------------

ABI = "9.9.0-1-arm64"
IMAGE = bytes(0x38) + b"ARM\x64" + bytes(8)  # the arm64 Image header's magic at 0x38


def fake_arm64_resolution(cache: Path) -> Resolution:
    debs = cache / "debs"
    debs.mkdir(parents=True)
    modules = f"usr/lib/modules/{ABI}"
    config = "CONFIG_ARM64=y\n# CONFIG_LIVEPATCH is not set\nCONFIG_HAVE_LIVEPATCH=y\n"
    make_deb(debs, "linux-binary-x", {f"{modules}/vmlinuz": IMAGE, f"{modules}/config": config})
    headers = f"usr/src/linux-headers-{ABI}"
    make_deb(
        debs,
        "linux-headers-x",
        {
            f"{headers}/Makefile": f"include /usr/src/linux-headers-{ABI}c/Makefile\n",
            f"{headers}/Module.symvers": "",
            f"{headers}/vmlinux": tiny_elf(BTF_SYMBOLS),
            f"usr/src/linux-headers-{ABI}c/Makefile": "all:\n",
            "usr/lib/linux-kbuild-9.9/scripts/Kbuild.include": "",
        },
        {f"{headers}/scripts": "../../lib/linux-kbuild-9.9/scripts"},
    )
    pkgs = []
    for n in ("linux-binary-x", "linux-headers-x"):
        deb = debs / f"{n}_1.0-1_arm64.deb"
        (debs / f"{n}_1.0-1_amd64.deb").rename(deb)
        size, sha = digest(deb)
        pkgs.append(Pkg(n, "1.0-1", "arm64", size, sha))
    return Resolution(ABI, "1.0-1", tuple(pkgs), time.time())


def guessing_recover(
    vmlinuz: Path,
    out: Path,
    timeout: float = 0,
    *,
    system_map: Path | None = None,
    anchors: dict[str, int] | None = None,
) -> kallsyms.Recovered:
    """kallsyms-finder's wrong guess (GUESSED), moved by the anchors as recover() does."""
    shift = kallsyms.anchored_shift(GUESSED, anchors, vmlinuz) if anchors else 0
    lines = [f"{(int(a, 16) + shift) % (1 << 64):016x} {t} {n}\n" for a, t, n in GUESSED]
    out.write_text("".join(lines))
    return kallsyms.Recovered(out, len(lines), 0.0)


@pytest.fixture
def arm64_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kernel:
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(kallsyms, "recover", guessing_recover)
    res = fake_arm64_resolution(tmp_path)
    save_resolution(parse_spec(f"debian:{ABI}"), res)
    return acq._install(None, res, parse_spec(f"debian:{ABI}"), Printer(quiet=True))


def test_an_arm64_entry_records_its_arch(arm64_kernel: Kernel, tmp_path: Path) -> None:
    k = arm64_kernel
    assert (k.arch, k.name, k.release) == ("arm64", f"debian-{ABI}", ABI)
    assert json.loads((k.kallsyms.parent / "kernel.json").read_text())["arch"] == "arm64"
    first = kallsyms.read(k.kallsyms)[0]
    assert (first.name, first.address) == ("_text", KIMAGE_VADDR)
    assert k.config_value("LIVEPATCH") == "n"
    again = acq.cached(f"debian:{ABI}")  # the entry passes its checks as an arm64 one
    assert again == k
    assert acq.acquire(f"debian:{ABI}").vmlinuz == k.vmlinuz  # warm: no apt at all


@dataclass
class StashedRoot:
    """An apt root of one architecture whose `download` copies the .debs kept aside."""

    arch: str
    root: Path
    stash: Path
    calls: list[tuple[str, list[str]]]

    def download(
        self, wanted: list[tuple[str, str]], dest: Path, *, printer: Any = None, size: int = 0
    ) -> None:
        self.calls.append((self.arch, [name for name, _ in wanted]))
        for name, _ in wanted:
            deb = next(self.stash.glob(f"{name}_*.deb"))
            deb.rename(dest / deb.name)


def test_host_packages_come_through_the_host_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kbuild tools (here: the headers package, made amd64) are fetched through the
    host's root, the kernel's own packages through its architecture's root."""
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(kallsyms, "recover", guessing_recover)
    res = fake_arm64_resolution(tmp_path)
    headers = res.packages[1]
    (tmp_path / "debs" / headers.deb).rename(
        tmp_path / "debs" / headers.deb.replace("arm64", "amd64")
    )
    res = replace(res, packages=(res.packages[0], replace(headers, arch="amd64")))
    stash = tmp_path / "stash"
    stash.mkdir()
    for deb in (tmp_path / "debs").glob("*.deb"):
        deb.rename(stash / deb.name)
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(
        acq, "private_root", lambda arch="amd64": StashedRoot(arch, tmp_path / arch, stash, calls)
    )
    kernel = acq._install(None, res, parse_spec(f"debian:{ABI}"), Printer(quiet=True))
    assert kernel.arch == "arm64"
    assert sorted(calls) == [("amd64", ["linux-headers-x"]), ("arm64", ["linux-binary-x"])]


class NoGuest(AbstractContextManager[BootedGuest]):
    def __enter__(self) -> BootedGuest:
        raise AssertionError("a kernel without CONFIG_LIVEPATCH must not be booted")

    def __exit__(self, *exc: object) -> None:
        return None


def test_runner_says_not_applicable_without_booting(arm64_kernel: Kernel, tmp_path: Path) -> None:
    def build(kernel: Kernel, sample: Sample, /, *, allow_no_livepatch: bool = False) -> Any:
        raise AssertionError("nothing is built for a kernel without CONFIG_LIVEPATCH")

    backend = Backend(
        acquire=lambda spec, printer: replace(arm64_kernel, spec=spec),
        build=build,
        boot=lambda kernel, log, cpus: NoGuest(),
    )
    sample = find_sample("kernel_clone")
    result = run_kernel(
        "debian:trixie-backports:arm64",
        [sample],
        tmp_path / "results",
        printer=Printer(quiet=True),
        backend=backend,
    )
    assert (result.error, result.arch, result.config["LIVEPATCH"]) == ("", "arm64", "n")
    [module] = result.modules
    assert (module.outcome, module.expected) == ("not-applicable", "not-applicable")
    assert module.reason.startswith("CONFIG_LIVEPATCH is not set")


# -- the real thing -----------------------------------------------------------------------------


@pytest.mark.cross_arch
@pytest.mark.parametrize(
    ("spec", "version"),
    [("debian:trixie-backports:arm64", (7, 3)), ("debian:bookworm:arm64", (6, 1))],
)
def test_real_debian_arm64_kernel(
    spec: str, version: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetched from the mirror into an empty cache; not applicable in the runner, unbooted."""
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path))
    kernel = acq.acquire(spec, printer=Printer(quiet=True))
    assert kernel.arch == "arm64" and kernel.version[:2] == version
    assert kernel.config_value("ARM64") == "y" and kernel.config_value("LIVEPATCH") == "n"
    table = {s.name: s.address for s in kallsyms.read(kernel.kallsyms)}
    # arch/arm64/kernel/vmlinux.lds.S: ASSERT(_text == KIMAGE_VADDR); _stext 64K further on;
    # 6.1 had a 128M module region below the image, 6.5+ a 2G one
    text = KIMAGE_VADDR if version >= (6, 5) else 0xFFFF800008000000
    assert table["_stext"] == text + 0x10000
    assert (kernel.headers / "scripts/mod/modpost").resolve().read_bytes()[18] == 62  # x86-64
    backend = Backend(boot=lambda kernel, log, cpus: NoGuest())
    result = run_kernel(spec, [find_sample("kernel_clone")], tmp_path / "r", backend=backend)
    assert [m.outcome for m in result.modules] == ["not-applicable"]
