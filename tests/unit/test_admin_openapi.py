"""The admin API's document: OpenAPI 3.1, every admin endpoint declares its bearer refusals, docs/openapi.json is
the generated document, and the settings refuse an enabled API without a token or with a short one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdcpipe.apply.admin import openapi_document
from cdcpipe.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_document() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/dlq/records", "/dlq/records/{letter_id}", "/dlq/replay",
                                 "/dlq/records/{letter_id}/resolve", "/status"}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            assert {"401", "429"} <= set(op["responses"]), (path, method)
            if method == "post":
                assert "403" in op["responses"], path
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == doc, \
        "docs/openapi.json is stale: python -m cdcpipe.apply.admin > docs/openapi.json"


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCPIPE_ADMIN__ENABLED", "true")
    with pytest.raises(ConfigError, match=r"admin\.enabled needs"):
        load_settings()
    monkeypatch.setenv("CDCPIPE_ADMIN__TOKEN", "short")
    with pytest.raises(ConfigError, match="16 characters"):
        load_settings()
    monkeypatch.setenv("CDCPIPE_ADMIN__TOKEN", "x" * 16)
    settings = load_settings()
    assert settings.admin.host == "127.0.0.1" and settings.admin.token is not None
