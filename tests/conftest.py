"""Slow test categories run only when a -m expression names them.

(Not an addopts `-m`: a user's own `-m "not vm"` would replace it and pull them all in.)
"""

from __future__ import annotations

import pytest

SLOW_MARKERS = ("long", "slow_build", "source_kernel", "matrix", "world", "cross_arch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.getoption("markexpr") or ""
    hidden = [m for m in SLOW_MARKERS if m not in expression]
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if any(item.get_closest_marker(m) for m in hidden) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
