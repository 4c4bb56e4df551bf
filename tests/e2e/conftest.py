"""End-to-end runs: ``--long`` (tests/conftest.py) lifts every CI-sized timeout."""

from __future__ import annotations

import pytest

LONG_TIMEOUT_S = 3 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--long``, every end-to-end test may run for hours instead of its CI-sized timeout."""
    if config.getoption("--long", default=False):
        for item in items:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S), append=False)
