"""The results schema (harness/schema/results.schema.json) against real and crafted files."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from harness.cli.main import main
from harness.paths import SCHEMA_FILE
from harness.report.model import validation_errors
from harness.suite.results import FAIL, SCHEMA, KernelResult, ModuleResult, RunResults

DATA = Path(__file__).parent / "data" / "results"
FIXTURES = sorted(DATA.glob("*/results.json"))


def schema() -> dict[str, Any]:
    data = json.loads(SCHEMA_FILE.read_text())
    assert isinstance(data, dict)
    return data


def real() -> dict[str, Any]:
    data = json.loads((DATA / "bookworm" / "results.json").read_text())
    assert isinstance(data, dict)
    return data


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema()["properties"]["schema"]["const"] == SCHEMA


def test_fixtures_are_there() -> None:
    names = {p.parent.name for p in FIXTURES}
    assert {"bookworm", "multi", "guest-died", "bookworm-regressed"} <= names


@pytest.mark.parametrize("path", FIXTURES, ids=[p.parent.name for p in FIXTURES])
def test_fixture_validates(path: Path) -> None:
    jsonschema.validate(json.loads(path.read_text()), schema())
    assert validation_errors(json.loads(path.read_text())) == []


def full_run(tmp_path: Path) -> RunResults:
    """Every field of every dataclass set to a non-default value."""
    module = ModuleResult(
        "kernel_clone",
        "klp_kernel_clone",
        FAIL,
        "pass",
        "resolved at the wrong address",
        seconds=1.5,
        evidence=["klp-harness: resolved kernel_clone,0 0xffffffff81000000"],
        converted=["vmlinux.kernel_clone,0"],
        toolchain="host gcc-12",
        build_log="/cache/build.log",
        console_log="/results/console-k.log",
    )
    kernel = KernelResult(
        spec="debian:bookworm",
        name="debian-6.1.0-56-amd64",
        release="6.1.0-56-amd64",
        package_version="6.1.192-2",
        packages=["linux-image-6.1.0-56-amd64-unsigned=6.1.192-2"],
        config={"LIVEPATCH": "y"},
        config_hash="sha256:" + "ab" * 32,
        toolchain="host gcc-12 (Debian 12.2.0-14) 12.2.0",
        accel="kvm",
        boot_seconds=3.2,
        console_log="/results/console-k.log",
        error="guest: died",
        modules=[module],
    )
    return RunResults(path=tmp_path / "results.json", kernels=[kernel])


def test_written_results_validate(tmp_path: Path) -> None:
    results = full_run(tmp_path)
    results.save()
    assert validation_errors(json.loads(results.path.read_text())) == []


def test_every_dataclass_field_is_in_the_schema() -> None:
    defs = schema()["$defs"]
    kernel_fields = {f.name for f in dataclasses.fields(KernelResult)}
    module_fields = {f.name for f in dataclasses.fields(ModuleResult)}
    assert kernel_fields == set(defs["kernel"]["properties"])
    assert module_fields == set(defs["module"]["properties"])


def _break(data: dict[str, Any], how: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    kernel, module = data["kernels"][0], data["kernels"][0]["modules"][0]
    if how == "schema-version":
        data["schema"] = "klp-harness/results/99"
    elif how == "missing-kernels":
        del data["kernels"]
    elif how == "outcome":
        module["outcome"] = "passed"
    elif how == "seconds-type":
        module["seconds"] = "1.5"
    elif how == "unknown-key":
        kernel["colour"] = "blue"
    elif how == "config-hash":
        kernel["config_hash"] = "md5:1234"
    elif how == "accel":
        kernel["accel"] = "hvf"
    elif how == "evidence-type":
        module["evidence"] = "one line"
    return data


@pytest.mark.parametrize(
    "how",
    [
        "schema-version",
        "missing-kernels",
        "outcome",
        "seconds-type",
        "unknown-key",
        "config-hash",
        "accel",
        "evidence-type",
    ],
)
def test_broken_results_are_refused(how: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_break(real(), how), schema())
    assert validation_errors(_break(real(), how))


def test_report_refuses_a_malformed_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps(_break(real(), "outcome")))
    assert main(["report", str(bad)]) == 25
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert str(bad) in err and "outcome" in err and "'passed' is not one of" in err


def test_report_refuses_non_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    assert main(["report", str(bad)]) == 25
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid JSON" in err


def test_report_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.json")]) == 3
    assert "no such file" in capsys.readouterr().err


def test_report_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 25
    assert "no results.json" in capsys.readouterr().err
