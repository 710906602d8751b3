"""Bisection: madison parsing on captured lines (mirror host replaced), version order, search."""

from __future__ import annotations

import pytest

from harness.errors import UsageError
from harness.suite.bisect import (
    KernelVersion,
    Runner,
    Step,
    bisect,
    compare_versions,
    parse_madison,
    pick,
)
from harness.suite.results import FAIL, PASS, KernelResult

# `apt-cache madison` in the private apt root (bookworm, 2026-11); host name replaced.
MADISON = """\
linux-image-6.1.0-47-amd64 |  6.1.170-3 | http://mirror.example/debian bookworm/main amd64 Packages
linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://mirror.example/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-56-amd64-unsigned |  6.1.192-2 | http://mirror.example/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-56-cloud-amd64 |  6.1.192-2 | http://mirror.example/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-0.deb11.49-amd64 | 6.1.174-1~deb11u1 | http://mirror.example/debian-security bullseye-security/main amd64 Packages
linux-image-6.12.74+deb12-amd64 | 6.12.74-2~bpo12+1 | http://mirror.example/debian bookworm-backports/main amd64 Packages
"""  # noqa: E501

BOOKWORM = {"bookworm", "bookworm-updates", "bookworm-security"}


def test_madison_keeps_the_suite_family_and_flavour() -> None:
    got = parse_madison(MADISON, BOOKWORM, "amd64")
    assert [(v.abi, v.version, v.suite) for v in got] == [
        ("6.1.0-47-amd64", "6.1.170-3", "bookworm"),
        ("6.1.0-56-amd64", "6.1.192-2", "bookworm-security"),
    ]
    assert got[0].spec == "debian:6.1.0-47-amd64" and got[0].series == "6.1"
    cloud = parse_madison(MADISON, BOOKWORM, "cloud-amd64")
    assert [v.abi for v in cloud] == ["6.1.0-56-cloud-amd64"]
    backports = parse_madison(MADISON, {"bookworm-backports"}, "amd64")
    assert [v.abi for v in backports] == ["6.12.74+deb12-amd64"]


def test_debian_version_order() -> None:
    assert compare_versions("6.1.170-3", "6.1.192-2") == -1
    assert compare_versions("6.1.192-2", "6.1.192-1") == 1
    assert compare_versions("6.12.74-2~bpo12+1", "6.12.74-2") == -1
    assert compare_versions("7.3.4-1", "7.3.4-1") == 0


VERSIONS = [KernelVersion(f"6.1.0-{n}-amd64", f"6.1.{n}-1", "bookworm") for n in range(40, 57)]


def fake_test(first_bad: int, seen: list[str]) -> Runner:
    def test(version: KernelVersion) -> Step:
        seen.append(version.abi)
        number = int(version.abi.split("-")[1])
        outcome = FAIL if number >= first_bad else PASS
        return Step(version, outcome, None, KernelResult(spec=version.spec))

    return test


@pytest.mark.parametrize("first_bad", [41, 47, 55, 56])
def test_bisect_finds_the_first_changed_version_in_log_steps(first_bad: int) -> None:
    seen: list[str] = []
    outcome = bisect(VERSIONS, 0, len(VERSIONS) - 1, fake_test(first_bad, seen))
    assert outcome.bad is not None
    assert outcome.bad.version.abi == f"6.1.0-{first_bad}-amd64"
    assert outcome.good.version.abi == f"6.1.0-{first_bad - 1}-amd64"
    assert len(seen) == len(set(seen)) <= 2 + 5  # both ends, then log2(17) rounded up


def test_bisect_without_change_boots_only_the_ends() -> None:
    seen: list[str] = []
    outcome = bisect(VERSIONS, 0, len(VERSIONS) - 1, fake_test(99, seen))
    assert outcome.bad is None and seen == [VERSIONS[0].abi, VERSIONS[-1].abi]


def test_pick_by_abi_or_version_and_errors() -> None:
    assert pick(VERSIONS, None, -1) == len(VERSIONS) - 1
    assert pick(VERSIONS, "6.1.0-45-amd64", 0) == 5
    assert pick(VERSIONS, "6.1.45-1", 0) == 5
    with pytest.raises(UsageError, match="not a reachable version"):
        pick(VERSIONS, "5.10.0-1-amd64", 0)
    with pytest.raises(UsageError, match="older than"):
        bisect(VERSIONS, 3, 3, fake_test(99, []))
