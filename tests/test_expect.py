"""The expectation data files: loading, validation errors, and per-kernel selection."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import ExpectationError
from harness.kernels.kernel import Kernel
from harness.suite.samples import all_samples, find_sample, load_sample


def fake_kernel(tmp_path: Path, release: str, config: str) -> Kernel:
    """Only the fields expectation matching reads; nothing here boots or builds."""
    cfg = tmp_path / f"config-{release}"
    cfg.write_text(config)
    p = tmp_path
    return Kernel(
        spec="test",
        name=f"test-{release}",
        release=release,
        package_version="0",
        vmlinuz=p,
        modules_dir=p,
        config=cfg,
        headers=p,
        symvers=p,
        kallsyms=p,
    )


def write(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "mod"
    d.mkdir(exist_ok=True)
    (d / "expect.toml").write_text(text)
    return d


def test_every_shipped_sample_loads() -> None:
    samples = all_samples()
    assert "kernel_clone" in {s.name for s in samples}
    for sample in samples:
        assert (sample.path / "Kbuild").is_file()


def test_kernel_clone_expectations_per_kernel(tmp_path: Path) -> None:
    sample = find_sample("kernel_clone")
    k61 = fake_kernel(tmp_path, "6.1.0-56-amd64", "CONFIG_LIVEPATCH=y\n")
    assert sample.expectation(k61).outcome == "pass"
    assert sample.expectation(k61).resolved == ("kernel_clone", "do_exit")
    nolp = fake_kernel(tmp_path, "6.1.0-nolp", "# CONFIG_LIVEPATCH is not set\n")
    assert sample.expectation(nolp).outcome == "refused"
    old = fake_kernel(tmp_path, "5.4.0-1-amd64", "CONFIG_LIVEPATCH=y\n")
    na = sample.expectation(old)
    assert (na.outcome, na.reason) == ("not-applicable", "needs kernel >= 5.10")


def test_conditions_on_version_range(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        'module = "m"\n'
        '[[expect]]\nwhen = { min_kernel = "6.0", max_kernel = "7.0" }\noutcome = "pass"\n'
        '[[expect]]\noutcome = "refused"\ndmesg = ["x"]\n',
    )
    sample = load_sample(d)
    assert sample.expectation(fake_kernel(tmp_path, "6.12.3", "")).outcome == "pass"
    assert sample.expectation(fake_kernel(tmp_path, "7.0.1", "")).outcome == "refused"
    assert sample.expectation(fake_kernel(tmp_path, "5.10.0", "")).outcome == "refused"


def test_no_matching_entry_is_an_error(tmp_path: Path) -> None:
    d = write(
        tmp_path, 'module = "m"\n[[expect]]\nwhen = { min_kernel = "9.0" }\noutcome = "pass"\n'
    )
    with pytest.raises(ExpectationError, match="no \\[\\[expect\\]\\] entry matches"):
        load_sample(d).expectation(fake_kernel(tmp_path, "6.1.0", ""))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("module = ", "not valid TOML"),
        ('[[expect]]\noutcome = "pass"\n', "`module` must name"),
        ('module = "m"\n', "at least one"),
        ('module = "m"\n[[expect]]\noutcome = "maybe"\n', "outcome must be one of"),
        ('module = "m"\n[[expect]]\noutcome = "pass"\ndmesg = ["("]\n', "bad regex"),
        ('module = "m"\nmin_kernel = "six"\n[[expect]]\noutcome = "pass"\n', "kernel version"),
        ('module = "m"\ncolour = 1\n[[expect]]\noutcome = "pass"\n', "unknown key"),
        ('module = "m"\n[convert]\nsympos = { f = -1 }\n[[expect]]\noutcome = "pass"\n', "sympos"),
        ('module = "m"\n[[expect]]\noutcome = "pass"\n[[expect.check]]\nout = 1\n', "cmd"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    d = write(tmp_path, text)
    with pytest.raises(ExpectationError, match=message) as info:
        load_sample(d)
    assert str(d / "expect.toml") in str(info.value)


def test_unknown_module_name_lists_the_samples() -> None:
    with pytest.raises(ExpectationError, match="kernel_clone"):
        find_sample("no_such_sample")


def test_config_values_are_read_from_the_kernel_config(tmp_path: Path) -> None:
    k = fake_kernel(
        tmp_path, "6.1.0", 'CONFIG_LIVEPATCH=y\nCONFIG_CC_VERSION_TEXT="gcc-12 (Debian)"\n'
    )
    assert k.config_value("LIVEPATCH") == "y"
    assert k.config_value("CONFIG_CC_VERSION_TEXT") == "gcc-12 (Debian)"
    assert k.config_value("MODULE_SIG_FORCE") == "n"
    assert replace(k, release="7.3.1").version == (7, 3, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'module = "m"\n[[expect]]\noutcome = "pass"\n'
            '[[expect.check]]\ncmd = "x"\nstatus = true\n',
            "expect[0].check[0]: `status` must be an integer, got true",
        ),
        (
            'module = "m"\n[convert]\nforce = "no"\n[[expect]]\noutcome = "pass"\n',
            '[convert]: `force` must be true or false, got "no"',
        ),
        (
            'module = "m"\n[convert]\nforce = 1\n[[expect]]\noutcome = "pass"\n',
            "[convert]: `force` must be true or false, got 1",
        ),
        (
            'module = "m"\n[[expect]]\noutcome = "pass"\nreason = 3\n',
            "expect[0]: `reason` must be a string, got 3",
        ),
        (
            'module = "m"\ndescription = ["a"]\n[[expect]]\noutcome = "pass"\n',
            "`description` must be a string, got an array",
        ),
        (
            'module = "m"\n[convert]\nsympos = { f = true }\n[[expect]]\noutcome = "pass"\n',
            "sympos: maps symbol names to positions",
        ),
    ],
)
def test_types_are_strict(tmp_path: Path, text: str, message: str) -> None:
    """`status = true` is no exit status and `force = "no"` is not false: refused, one line
    naming the file, the key and the type wanted (exit 24)."""
    d = write(tmp_path, text)
    with pytest.raises(ExpectationError) as info:
        load_sample(d)
    assert str(info.value).startswith(f"{d / 'expect.toml'}: ")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 24


def test_right_types_still_load(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        'module = "m"\ndescription = "d"\n[convert]\nforce = false\nsympos = { f = 0 }\n'
        '[[expect]]\noutcome = "pass"\nreason = "r"\n[[expect.check]]\ncmd = "x"\nstatus = 1\n',
    )
    sample = load_sample(d)
    assert (sample.description, sample.convert.force) == ("d", False)
    assert sample.cases[0][1].checks[0].status == 1 and sample.cases[0][1].reason == "r"
