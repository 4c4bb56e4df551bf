"""Options for the whole suite (pytest reads pytest_addoption only from the rootdir's conftest and plugins)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="end-to-end runs of long-run size (>= 200,000 operations) instead of CI size")
