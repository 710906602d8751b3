"""Host apt configuration parsing and the private apt root's files (no network)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from harness.console import Printer
from harness.errors import KernelError
from harness.kernels.apt import (
    AptRoot,
    parse_control,
    parse_depends,
    preferences_text,
    private_sources,
)
from harness.kernels.mirrors import (
    MIRROR_ENV,
    debian_mirror,
    find_mirrors,
    parse_deb822,
    parse_one_line,
    read_host_sources,
)

ONE_LINE = """\
# a comment
deb http://mirror.example/debian bookworm main contrib
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian bookworm-updates \
main
deb-src http://mirror.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main  # trailing
deb https://vendor.example/apt cloud-sdk main
"""

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://other.example/node
Suites: nodistro
Components: main
Enabled: no
"""


def test_one_line_format() -> None:
    srcs = parse_one_line(ONE_LINE)
    assert [s.suites for s in srcs] == [
        ("bookworm",),
        ("bookworm-updates",),
        ("bookworm",),
        ("bookworm-security",),
        ("cloud-sdk",),
    ]
    assert srcs[0].components == ("main", "contrib")
    assert srcs[1].signed_by == "/usr/share/keyrings/x.gpg"
    assert srcs[2].types == ("deb-src",)
    assert srcs[3].uris == ("http://security.example/debian-security",)


def test_deb822_format() -> None:
    srcs = parse_deb822(DEB822)
    assert len(srcs) == 3
    assert srcs[0].suites == ("bookworm", "bookworm-updates")
    assert srcs[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert not srcs[2].enabled


@pytest.mark.parametrize("layout", ["one-line", "deb822"])
def test_host_mirrors(tmp_path: Path, layout: str) -> None:
    (tmp_path / "sources.list.d").mkdir()
    if layout == "one-line":
        (tmp_path / "sources.list").write_text(ONE_LINE)
    else:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
        (tmp_path / "sources.list.d" / "off.list.disabled").write_text("deb http://x/ sid main\n")
    mirrors = find_mirrors(read_host_sources(tmp_path))
    assert mirrors.debian.uris == ("http://mirror.example/debian",)
    assert mirrors.security is not None
    assert mirrors.security.uris == ("http://security.example/debian-security",)
    text = private_sources(mirrors)
    assert "URIs: http://mirror.example/debian\n" in text
    debian, security = text.split("\n\n")
    for suite in ("bullseye", "bookworm-backports", "trixie-backports", "forky", "sid"):
        assert f" {suite}" in debian
    assert "bullseye-backports" not in text
    assert "Suites: bullseye-security bookworm-security trixie-security forky-security" in security


def test_no_mirror(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb https://vendor.example/apt cloud-sdk main\n")
    with pytest.raises(KernelError, match="no Debian mirror found"):
        find_mirrors(read_host_sources(tmp_path))
    with pytest.raises(KernelError, match="no Debian mirror found"):
        debian_mirror(tmp_path)


# deb-src and security entries first: the mirror for mmdebstrap must skip both.
DEB822_SRC_FIRST = """\
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
"""


def test_debian_mirror_skips_security_and_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822_SRC_FIRST)
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_debian_mirror_from_one_line_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    text = (
        "deb https://vendor.example/apt cloud-sdk-bookworm main\n"
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
    )
    assert len(parse_one_line(text)) == 2  # the commented-out line is no entry
    (tmp_path / "sources.list").write_text(text)
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"  # third party skipped


def test_debian_mirror_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, "http://mirror.example/debian/")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"  # no host sources read


def test_preferences_pin_other_suites_away() -> None:
    text = preferences_text({"trixie-backports": 990, "trixie": 500})
    assert "Pin: release n=trixie-backports\nPin-Priority: 990" in text
    assert "Pin: release n=sid\nPin-Priority: -1" in text
    assert "Pin: release n=trixie\nPin-Priority: -1" not in text


def test_control_and_depends() -> None:
    recs = parse_control("Package: a\nVersion: 1\nDescription: x\n more\n\nPackage: b\n")
    assert recs[0]["Description"] == "x\nmore" and recs[1]["Package"] == "b"
    deps = parse_depends(
        "linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), "
        "dracut | initramfs-tools (>= 0.120+deb8u2), linux-kbuild-6.1 (>= 6.1.1), "
        "gcc-14-for-host:any"
    )
    assert [(d.name, d.op, d.version) for d in deps] == [
        ("linux-base-7.3.4+deb13-amd64", "=", "7.3.4-1~bpo13+1"),
        ("dracut", "", ""),
        ("linux-kbuild-6.1", ">=", "6.1.1"),
        ("gcc-14-for-host", "", ""),
    ]


def test_private_root_options(tmp_path: Path) -> None:
    mirrors = find_mirrors(parse_deb822(DEB822))
    apt = AptRoot(tmp_path / "apt", mirrors)
    apt.setup()
    opts = apt.options({"bookworm": 500})
    joined = " ".join(opts)
    assert f"Dir::State::status={tmp_path}/apt/state/status" in joined
    for opt in opts:  # every path is inside the private root: the system's apt is untouched
        if "/" in opt:
            assert opt.split("=")[-1].startswith(f"{tmp_path}/apt/")
    assert (tmp_path / "apt/state/status").read_text() == ""
    assert apt.lists_age() is None  # never updated: the next acquire updates


# Stands in for `apt-get download NAME=VERSION`: the .deb grows in four steps; a name "missing"
# fails as apt does.
FAKE_APT_GET = """#!/bin/sh
for last; do :; done
name=${last%%=*}
if [ "$name" = missing ]; then echo "E: Unable to locate package missing" >&2; exit 100; fi
for i in 1 2 3 4; do head -c 1000 /dev/zero >> "${name}_1_amd64.deb"; sleep 0.3; done
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AptRoot:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(FAKE_APT_GET)
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return AptRoot(tmp_path / "apt", find_mirrors(parse_deb822(DEB822)))


@pytest.mark.parametrize("tty", [False, True])
def test_download_progress_goes_through_the_printer(
    fake_apt: AptRoot, tmp_path: Path, tty: bool
) -> None:
    out = io.StringIO()
    printer = Printer(out, tty=tty).for_kernel("k1")
    fake_apt.download([("pkg", "1")], tmp_path / "debs", printer=printer, size=4000)
    assert [p.name for p in (tmp_path / "debs").iterdir()] == ["pkg_1_amd64.deb"]
    assert (tmp_path / "debs/pkg_1_amd64.deb").stat().st_size == 4000
    text = out.getvalue()
    if tty:  # one self-rewriting bar, ended once complete
        assert text.startswith("\rklp-harness: [k1] downloading [") and text.count("\n") == 1
        assert text.endswith("100%\n")
    else:  # plain lines in a log, a few at most
        lines = text.splitlines()
        assert 2 <= len(lines) <= 5 and lines[-1] == "klp-harness: [k1] downloading: 100%"


def test_download_failure_names_apts_error(fake_apt: AptRoot, tmp_path: Path) -> None:
    said = r"^download failed: E: Unable to locate package missing$"
    with pytest.raises(KernelError, match=said):
        fake_apt.download([("missing", "1")], tmp_path / "debs", printer=Printer(io.StringIO()))
    assert list((tmp_path / "debs").iterdir()) == []  # its temp dir is gone
