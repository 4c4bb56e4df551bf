"""End-to-end fixtures: the shared stack fixtures of the integration tests, and ``--long`` for bigger runs."""

from __future__ import annotations

import pytest

from tests.integration.conftest import settings, stack_env

__all__ = ["settings", "stack_env"]


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long", default=False))
