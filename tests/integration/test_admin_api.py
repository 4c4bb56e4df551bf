"""The admin HTTP API (issue 18) served for real (uvicorn on a free port, a real PostgreSQL): every endpoint needs
a bearer token (401 without, 403 for a read token on a write endpoint, 429 after repeated failures); dead letters
are listed with a cursor, shown with their bytes, resolved and replayed; a property-based run (schemathesis)
against the served OpenAPI document finds no 5xx and no response outside the document; the tokens never reach
the logs; ``docs/openapi.json`` is the served document."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
import schemathesis.openapi

from cdcpipe.apply import admin
from cdcpipe.apply.adminauth import READ, WRITE, Tokens
from cdcpipe.apply.deadletter import ensure_table
from cdcpipe.apply.replay import Replayer
from cdcpipe.config import Settings
from tests.support.processes import free_port, unique

W, R = "write-token-" + "w" * 20, "read-token-" + "r" * 20
ROOT = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, settings: Settings, table: str) -> None:
        self.settings, self.table, self.port = settings, table, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),), daemon=True)

    async def main(self) -> None:
        import uvicorn

        from cdcpipe.apply.decode import SchemaReader
        from cdcpipe.apply.writer import BatchWriter
        from cdcpipe.topics import schemas_topic

        self.stop = asyncio.Event()
        pool = await asyncpg.create_pool(self.settings.require("postgres.dsn").get_secret_value(), min_size=1,
                                         max_size=4)
        await ensure_table(pool)
        await pool.executemany(
            "INSERT INTO cdcpipe_dlq (group_id, topic, partition, kafka_offset, table_name, error_type, message, "
            "retry_count, key, value) VALUES ('admin-test', $1, 0, $2, $3, 'ApplyError', 'value rejected', 0, "
            "$4, $5)", [(f"t.{self.table}", i, self.table, i.to_bytes(4, "big"), b"not an event") for i in range(5)])
        reader = SchemaReader.open(self.settings.kafka.client_config(), schemas_topic("admin-test"))
        writer = BatchWriter(pool, grace_s=0, schema_prefix="")

        replay = Replayer(pool, reader, writer).replay
        app = admin.build(pool, Tokens([(WRITE, W), (READ, R)], max_failures=5), replay, lambda: (True, {"x": "ok"}))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                               access_log=False, lifespan="off"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        self.ready.set()
        await self.stop.wait()
        server.should_exit = True
        await serving
        await pool.execute("DELETE FROM cdcpipe_dlq WHERE table_name = $1", self.table)
        await pool.close()
        reader.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(stack_env: dict[str, str]) -> Iterator[Served]:
    from cdcpipe.config import load_settings

    s = Served(load_settings(), unique("adm", 8) + ".t")
    s.thread.start()
    assert s.ready.wait(60)
    yield s
    assert s.stop is not None
    s.loop.call_soon_threadsafe(s.stop.set)
    s.thread.join(60)


def test_tokens_are_required(served: Served) -> None:
    with httpx.Client(base_url=served.url) as c:
        assert c.get("/dlq/records").status_code == 401
        assert c.get("/dlq/records", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/status", headers={"Authorization": f"Bearer {R}"}).status_code == 200
        r = c.post("/dlq/records/1/resolve", json={"note": "n"}, headers={"Authorization": f"Bearer {R}"})
        assert r.status_code == 403
        assert c.get("/openapi.json").status_code == 200  # the document itself is public (no data)


def test_failed_authentications_are_limited(served: Served) -> None:
    with httpx.Client(base_url=served.url, transport=httpx.HTTPTransport(local_address="127.0.0.4")) as c:
        codes = [c.get("/status", headers={"Authorization": f"Bearer bad{i}"}).status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
        assert c.get("/status", headers={"Authorization": f"Bearer {W}"}).status_code == 429  # even a good one


def test_list_show_resolve_replay(served: Served) -> None:
    h = {"Authorization": f"Bearer {W}"}
    with httpx.Client(base_url=served.url, headers=h, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as c:
        page = c.get("/dlq/records", params={"table": served.table, "limit": 3}).json()
        assert len(page["records"]) == 3 and page["next_after"] == page["records"][-1]["id"]
        rest = c.get("/dlq/records", params={"table": served.table, "after": page["next_after"]}).json()
        assert len(rest["records"]) == 2 and rest["next_after"] is None
        first = page["records"][0]["id"]
        shown = c.get(f"/dlq/records/{first}").json()
        assert shown["value"] == b"not an event".hex() and shown["status"] == "pending"
        assert c.get("/dlq/records/999999999999").status_code == 404
        r = c.post(f"/dlq/records/{first}/resolve", json={"note": "handled by hand"}).json()
        assert r == {"id": first, "result": "resolved", "status": "resolved"}
        assert c.post("/dlq/replay", json={}).status_code == 400
        out = c.post("/dlq/replay", json={"ids": [first, page["records"][1]["id"]], "note": "try"}).json()
        results = {o["id"]: o["result"] for o in out["outcomes"]}
        assert results == {first: "not_open", page["records"][1]["id"]: "failed"}  # its bytes are no event
        again = c.get(f"/dlq/records/{page['records'][1]['id']}").json()
        assert (again["status"], again["retry_count"], again["resolved_by"]) == ("failed", 1, "admin-api@127.0.0.2")


def test_docs_copy_is_the_served_document(served: Served) -> None:
    served_doc = httpx.get(f"{served.url}/openapi.json").json()
    assert served_doc["openapi"].startswith("3.1")
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == served_doc == admin.openapi_document()


def test_property_based_against_the_document(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """schemathesis generates requests from the served document, every operation; each response must be no 5xx
    and within the document (status, content type, body schema).  Its check that every schema-valid request is
    accepted is left out: a replay with neither ids nor a filter is valid JSON for the document and refused with
    the documented 400 (the document cannot say "one of them")."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    caplog.set_level(logging.DEBUG)
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {W}"},
                                   excluded_checks=[positive_data_acceptance])
        check()
    for record in caplog.records:
        assert W not in record.getMessage() and R not in record.getMessage()
