"""End-to-end fixtures: the shared stack fixtures of the integration tests, and ``--long`` for bigger runs."""

from __future__ import annotations

import pytest

from tests.integration.conftest import settings, stack_env

__all__ = ["settings", "stack_env"]


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long", default=False))


LONG_TIMEOUT_S = 3 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--long``, every end-to-end test may run for hours instead of its CI-sized timeout."""
    if config.getoption("--long", default=False):
        for item in items:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S), append=False)
