"""End-to-end fixtures: the shared stack fixtures of the integration tests, and ``--long`` for bigger runs."""

from __future__ import annotations

import pytest

from tests.integration.conftest import settings, stack_env

__all__ = ["settings", "stack_env"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="end-to-end runs of long-run size (>= 200,000 operations) instead of CI size")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long", default=False))
