"""The whole suite on every kernel of a matrix, two guests at a time, through the library.

Slow (every kernel fetched, every module built, one boot per kernel): behind the `matrix`
marker, which the default run deselects. `pytest -m matrix [--klp-matrix FILE]`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.kernels.spec import DEFAULT_DIR, load_matrix
from harness.suite.results import format_table
from harness.suite.runner import default_jobs, run
from harness.suite.samples import all_samples

pytestmark = pytest.mark.matrix


def test_suite_on_every_matrix_kernel(
    request: pytest.FixtureRequest, klp_results_dir: Path
) -> None:
    chosen = request.config.getoption("klp_matrix")
    matrix = Path(chosen) if chosen else DEFAULT_DIR / "debian.toml"
    specs = [d.spec for d in load_matrix(matrix)]
    results = run(specs, all_samples(), klp_results_dir, jobs=min(len(specs), default_jobs()))
    table = format_table(results)
    print(table)
    assert [k.spec for k in results.kernels] == specs
    assert results.ok, table
