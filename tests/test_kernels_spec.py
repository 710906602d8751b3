"""Kernel spec parsing and the kernels/*.toml declarations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.build import buildroot
from harness.build.toolchain import parse_cc_version_text, suite_for
from harness.cli.main import main
from harness.errors import ExpectationError, KernelError
from harness.kernels.acquire import acquire
from harness.kernels.apt import preferences_text, private_sources
from harness.kernels.mirrors import AptSource, Mirrors, find_mirrors
from harness.kernels.releases import DEFAULT_FILE, ENV_VAR, all_suites, load_releases
from harness.kernels.spec import (
    check_spec,
    default_spec,
    load_declared,
    load_matrix,
    parse_spec,
    resolve_name,
)


def test_suite_specs() -> None:
    s = parse_spec("debian:bookworm")
    assert (s.kind, s.release, s.backports) == ("debian-suite", "bookworm", False)
    assert s.flavour == "amd64"
    assert s.suite_priorities() == {
        "bookworm": 500,
        "bookworm-updates": 500,
        "bookworm-security": 500,
    }
    b = parse_spec("debian:trixie-backports")
    assert b.suite == "trixie-backports" and b.suite_priorities()["trixie-backports"] == 990
    c = parse_spec("debian:bookworm-backports-cloud")
    assert (c.backports, c.flavour) == (True, "cloud-amd64")
    assert parse_spec("debian:sid").suite_priorities() == {"sid": 500}


@pytest.mark.parametrize(
    ("text", "abi", "flavour"),
    [
        ("debian:6.1.0-47-amd64", "6.1.0-47-amd64", "amd64"),
        ("debian:6.1.0-47-cloud-amd64", "6.1.0-47-cloud-amd64", "cloud-amd64"),
        ("debian:6.12.115+deb13.1-amd64", "6.12.115+deb13.1-amd64", "amd64"),
        ("debian:6.1.0-0.deb11.48-amd64", "6.1.0-0.deb11.48-amd64", "amd64"),
        ("debian:7.3.4+deb13-amd64", "7.3.4+deb13-amd64", "amd64"),
    ],
)
def test_abi_specs(text: str, abi: str, flavour: str) -> None:
    s = parse_spec(text)
    assert (s.kind, s.abi, s.flavour, s.text) == ("debian-abi", abi, flavour, text)
    assert s.suite_priorities() == {}


def test_local_and_source(tmp_path: Path) -> None:
    s = parse_spec(f"local:{tmp_path}")
    assert s.kind == "local" and s.path == tmp_path
    src = parse_spec("source:6.1:livepatch")
    assert (src.kind, src.ref, src.config, src.path) == ("source", "6.1", "livepatch", None)
    with pytest.raises(KernelError, match="not a built kernel tree"):
        acquire(f"local:{tmp_path}")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bookworm", "unknown kernel spec"),
        ("debian:", "unknown kernel spec"),
        ("ubuntu:jammy", "unknown kernel spec kind"),
        ("debian:buster", "unknown suite"),
        ("debian:sid-backports", "unknown suite"),
        ("debian:bullseye-backports", "unknown suite"),
        ("debian:6.1.0-47-i386", "unknown suite or ABI"),
    ],
)
def test_bad_specs(text: str, match: str) -> None:
    with pytest.raises(KernelError, match=match) as err:
        parse_spec(text)
    assert "\n" not in str(err.value)


def test_repository_declarations() -> None:
    decls = load_declared()
    names = {d.name for d in decls}
    assert {"bookworm", "trixie-backports"} <= names
    assert default_spec() == "debian:bookworm"
    for d in decls:
        parse_spec(d.spec)
    assert resolve_name("bookworm") == "debian:bookworm"
    assert resolve_name("debian:sid") == "debian:sid"


def _write(dir: Path, name: str, text: str) -> None:
    (dir / name).write_text(text)


def test_declarations_format(tmp_path: Path) -> None:
    _write(tmp_path, "a.toml", '[[kernel]]\nname = "k1"\nspec = "debian:sid"\n')
    _write(
        tmp_path,
        "b.toml",
        '[[kernel]]\nname = "k2"\nspec = "debian:bookworm"\n'
        'default = true\ndescription = "x"\n[[kernel]]\nname = "k3"\nspec = "local:/x"\n',
    )
    (tmp_path / "releases").mkdir()  # data beside the declarations: not read as kernels
    (tmp_path / "releases" / "debian.toml").write_text(DEFAULT_FILE.read_text())
    decls = load_declared(tmp_path)
    assert [d.name for d in decls] == ["k1", "k2", "k3"]
    assert decls[1].default and decls[1].description == "x"
    assert default_spec(tmp_path) == "debian:bookworm"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[kernel]]\nname = "k"\n', "'spec' must be"),
        ('[[kernel]]\nname = "k"\nspec = "debian:buster"\n', "unknown suite"),
        ('[[kernel]]\nname = "k"\nspec = "debian:sid"\nflavor = 1\n', "unknown keys"),
        ("kernel = 1\n", "array of tables"),
        ("[[kernel]\n", "invalid TOML"),
        ("[other]\n", "unknown top-level"),
        (
            '[[kernel]]\nname = "k"\nspec = "debian:sid"\n'
            '[[kernel]]\nname = "k"\nspec = "debian:sid"\n',
            "already declared",
        ),
        (
            '[[kernel]]\nname = "a"\nspec = "debian:sid"\ndefault = true\n'
            '[[kernel]]\nname = "b"\nspec = "debian:sid"\ndefault = true\n',
            "more than one default",
        ),
    ],
)
def test_declaration_errors(tmp_path: Path, text: str, match: str) -> None:
    _write(tmp_path, "k.toml", text)
    with pytest.raises(ExpectationError, match=match):
        load_declared(tmp_path)


def test_no_default(tmp_path: Path) -> None:
    _write(tmp_path, "k.toml", '[[kernel]]\nname = "k"\nspec = "debian:sid"\n')
    with pytest.raises(ExpectationError, match="no kernel is marked default"):
        default_spec(tmp_path)


def test_empty_matrix_directory_is_refused(tmp_path: Path) -> None:
    # it used to run the default kernel instead, silently
    with pytest.raises(ExpectationError, match="no \\[\\[kernel\\]\\] declared") as err:
        load_matrix(tmp_path)
    assert err.value.exit_code == 24 and str(tmp_path) in str(err.value)
    _write(tmp_path, "notes.txt", "[[kernel]]\n")
    with pytest.raises(ExpectationError, match="no \\[\\[kernel\\]\\] declared"):
        load_matrix(tmp_path)


def test_duplicate_names_in_one_matrix_file(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "m.toml",
        '[[kernel]]\nname = "a"\nspec = "debian:bookworm"\n'
        '[[kernel]]\nname = "a"\nspec = "debian:trixie"\n',
    )
    with pytest.raises(ExpectationError, match="kernel name 'a' already declared in the same"):
        load_matrix(tmp_path / "m.toml")
    _write(
        tmp_path,
        "m.toml",
        '[[kernel]]\nname = "a"\nspec = "debian:sid"\ndefault = true\n'
        '[[kernel]]\nname = "b"\nspec = "debian:sid"\ndefault = true\n',
    )
    with pytest.raises(ExpectationError, match="more than one default"):
        load_matrix(tmp_path / "m.toml")
    _write(
        tmp_path,
        "m.toml",
        '[[kernel]]\nname = "a"\nspec = "debian:sid"\n'
        '[[kernel]]\nname = "b"\nspec = "debian:sid"\n',
    )
    assert [d.name for d in load_matrix(tmp_path / "m.toml")] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("debian:nosuch", "unknown suite or ABI 'nosuch'"),
        ("nosuch", "neither a kernel spec nor a declared kernel name"),
        ("source:6.1:nosuchconfig", "no config 'nosuchconfig'"),
        ("local:/nonexistent/tree", "/nonexistent/tree is not a directory"),
    ],
)
def test_check_spec_refuses_before_any_fetch(text: str, match: str) -> None:
    """What `run` calls for each spec before it writes a results dir: exit 20, one line."""
    with pytest.raises(KernelError, match=match) as err:
        check_spec(text)
    assert err.value.exit_code == 20 and "\n" not in str(err.value)


def test_check_spec_accepts(tmp_path: Path) -> None:
    assert check_spec("bookworm").text == "debian:bookworm"
    assert check_spec("debian:6.1.0-47-amd64").kind == "debian-abi"
    assert check_spec("source:6.1:livepatch").config == "livepatch"
    assert check_spec(f"local:{tmp_path}").path == tmp_path


# -- the Debian releases, as data (kernels/releases/debian.toml) ---------------------------------

DUKE = """
[[release]]
codename = "duke"
version = "15"
suites = ["security", "backports"]
gcc = 17
"""


def _releases(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "releases.toml"
    path.write_text(text)
    return path


def test_repository_releases() -> None:
    releases = load_releases()
    assert [r.codename for r in releases] == ["bullseye", "bookworm", "trixie", "forky", "sid"]
    assert {r.codename: r.gcc for r in releases}["bookworm"] == 12
    assert "bullseye-backports" not in all_suites() and "trixie-backports" in all_suites()


def test_an_added_release_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a Debian release is one [[release]] table: specs, the private apt root's suites
    and pins, the host mirror detection and the build root for its gcc all follow."""
    with pytest.raises(KernelError, match="unknown suite"):
        parse_spec("debian:duke-backports")
    monkeypatch.setenv(ENV_VAR, str(_releases(tmp_path, DEFAULT_FILE.read_text() + DUKE)))
    spec = parse_spec("debian:duke-backports")
    assert spec.suite_priorities() == {"duke": 500, "duke-security": 500, "duke-backports": 990}
    assert all_suites()[-3:] == ["duke", "duke-security", "duke-backports"]
    debian = AptSource(("http://mirror.example/debian",), ("duke",), ("main",))
    security = AptSource(("http://security.example/debian-security",), ("duke-security",), ())
    mirrors = find_mirrors([debian, security])  # a host that runs the new release
    main_stanza, security_stanza = private_sources(mirrors).split("\n\n")
    assert main_stanza.splitlines()[2].endswith(" sid duke duke-backports")
    assert security_stanza.splitlines()[2].endswith(" duke-security")
    assert "Pin: release n=duke\nPin-Priority: -1" in preferences_text({"sid": 500})
    assert suite_for(parse_cc_version_text("gcc-17 (Debian 17.1.0-1) 17.1.0"), None) == "duke"
    assert buildroot.packages_for("duke")[0] == "gcc-17"
    assert Mirrors(debian, security).debian.suites == ("duke",)


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("gcc = 14", 'gcc = "14"', "release #3 (trixie): 'gcc' must be the gcc major"),
        ('suites = ["security"]', 'suites = ["securty"]', "release #4 (forky): 'suites' must"),
        ('codename = "sid"', 'codename = "Sid"', "release #5: 'codename' must be"),
        ('version = "12"', 'version = "12"\nkernel = "6.1"', "release #2 (bookworm): unknown keys"),
        ('codename = "sid"', 'codename = "forky"', "release 'forky' listed twice"),
        ("\n[[release]]\n", "\n[[releases]]\n", "unknown top-level keys ['releases']"),
        ("gcc = 10", "gcc =", "invalid TOML"),
    ],
)
def test_bad_releases_file_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    said: str,
) -> None:
    path = _releases(tmp_path, DEFAULT_FILE.read_text().replace(old, new, 1))
    with pytest.raises(ExpectationError, match=f"^{path}: .*{re.escape(said)}"):
        load_releases(path)
    monkeypatch.setenv(ENV_VAR, str(path))
    monkeypatch.setenv("KLP_HARNESS_CACHE", str(tmp_path / "cache"))
    assert main(["kernels", "info", "--cached-only", "debian:bookworm"]) == 24
    err = capsys.readouterr().err
    assert err.startswith(f"klp-harness: {path}: ") and err.count("\n") == 1 and said in err


def test_missing_releases_file(tmp_path: Path) -> None:
    with pytest.raises(ExpectationError, match="cannot read the Debian releases"):
        load_releases(tmp_path / "nonexistent.toml")
