"""Options for the whole suite (pytest reads pytest_addoption only from the rootdir's conftest and plugins), and
the shared fixtures (tests/support/fixtures.py)."""

from __future__ import annotations

import os

import pytest

pytest.register_assert_rewrite("tests.support")  # the shared helpers' asserts report like the tests' own

pytest_plugins = ["tests.support.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="end-to-end runs of long-run size (>= 200,000 operations) instead of CI size")


def pytest_configure(config: pytest.Config) -> None:
    """``--long`` is also told to the test modules as they are imported (``CDCPIPE_TEST_LONG=1``): a module-level
    size (an outage's length, a timeout) can follow it."""
    if config.getoption("--long", default=False):
        os.environ["CDCPIPE_TEST_LONG"] = "1"
