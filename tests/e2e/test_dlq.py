"""``cdcpipe dlq`` on the real stack (issue 18's acceptance, by the CLI): values PostgreSQL rejects (a CHECK
constraint added to the mirror by hand) are dead-lettered by the running apply, listed with their coordinates
and error; replayed while the constraint holds they fail again and stay (``failed``, retry counted, exit 1); the
table fixed (the constraint dropped), a replay applies them through apply's path — the row appears, status
``replayed`` — a second replay is a no-op, and a replayed event older than the row PostgreSQL holds changes
nothing (``USING TIMESTAMP``); ``resolve`` marks one handled without a replay."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.test_erase import pg
from tests.e2e.test_schema_changes import running
from tests.support.harness import Pipeline, wait_for
from tests.support.processes import free_port
from tests.support.stack import ROOT

pytestmark = pytest.mark.timeout(300)


def dlq(pipeline: Pipeline, *args: str) -> tuple[int, list[dict[str, Any]]]:
    cmd = [sys.executable, "-m", "cdcpipe", "dlq", "--output", "json", "--actor", "e2e-operator", *args]
    done = subprocess.run(cmd, env=pipeline.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    with (pipeline.workdir / "dlq.log").open("a") as f:
        f.write(f"==== {' '.join(cmd[3:])} (exit {done.returncode})\n{done.stdout}{done.stderr}")
    return done.returncode, [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]


TOKEN = "e2e-admin-token-" + "z" * 16


def test_dead_letters_listed_replayed_and_resolved(stack_env: dict[str, str], tmp_path: Any) -> None:
    port = free_port()
    admin = {"CDCPIPE_ADMIN__ENABLED": "true", "CDCPIPE_ADMIN__TOKEN": TOKEN, "CDCPIPE_ADMIN__PORT": str(port)}
    with running(stack_env, tmp_path, "e2edl", "t (k int PRIMARY KEY, v text, n int)", extra=admin) as (
            stack, ks, session, pipeline):
        target = f'"{ks}"."t"'
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (1, 'ok', 1)")
        wait_for("the mirror", lambda: bool(pg(stack.dsn, "SELECT to_regclass($1) IS NOT NULL AS x",
                                                target)[0]["x"]) and len(pg(stack.dsn, f"SELECT k FROM {target}")) == 1,
                 60, pipeline)
        pg(stack.dsn, f"ALTER TABLE {target} ADD CONSTRAINT small_n CHECK (n < 1000)")
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (2, 'big', 5000)")
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (3, 'old', 7000) USING TIMESTAMP 100")
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (4, 'never', 9000)")
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (5, 'after', 5)")
        wait_for("apply to dead-letter three events and apply the others",
                 lambda: len(pg(stack.dsn, "SELECT id FROM cdcpipe_dlq WHERE table_name = $1", f"{ks}.t")) == 3
                 and len(pg(stack.dsn, f"SELECT k FROM {target}")) == 2, 90, pipeline)
        session.execute(f"INSERT INTO {ks}.t (k, v, n) VALUES (3, 'newer', 3) USING TIMESTAMP 200")
        wait_for("k=3 written by a newer event",
                 lambda: [tuple(r) for r in pg(stack.dsn, f"SELECT n FROM {target} WHERE k = 3")] == [(3,)], 60,
                 pipeline)

        # listed, with coordinates and the error
        rc, out = dlq(pipeline, "list", "--table", f"{ks}.t")
        assert rc == 0, out
        letters = out[:-1]
        assert len(letters) == 3 and out[-1]["listed"] == 3, out
        assert all(x["status"] == "pending" and x["topic"].endswith(f"{ks}.t") and x["offset"] >= 0
                   and "small_n" in x["message"] for x in letters), letters
        by_key = {}
        for x in letters:
            rc, shown = dlq(pipeline, "show", str(x["id"]))
            assert rc == 0 and shown[0]["value"], shown
            by_key[int(shown[0]["key"], 16)] = x["id"]
        assert set(by_key) == {2, 3, 4}, by_key

        # replayed while the table still refuses: fails again, stays, retry counted
        rc, out = dlq(pipeline, "replay", str(by_key[4]), "--note", "too early")
        assert rc == 1 and out[0]["result"] == "failed" and "small_n" in out[0]["error"], out
        rc, out = dlq(pipeline, "list", "--status", "failed", "--table", f"{ks}.t")
        assert [(x["id"], x["retry_count"], x["replays"]) for x in out[:-1]] == [(by_key[4], 1, 1)], out

        # resolved by hand: left alone by later replays
        rc, out = dlq(pipeline, "resolve", str(by_key[4]), "--note", "customer withdrew the order")
        assert rc == 0 and out[0]["result"] == "resolved", out

        # the table fixed: a replay applies the open ones through apply's path
        pg(stack.dsn, f"ALTER TABLE {target} DROP CONSTRAINT small_n")
        rc, out = dlq(pipeline, "replay", "--table", f"{ks}.t", "--note", "constraint relaxed")
        assert rc == 0, out
        assert {x["id"]: x["result"] for x in out[:-1]} == {by_key[2]: "applied", by_key[3]: "applied",
                                                            by_key[4]: "not_open"}, out
        rows = {r["k"]: (r["v"], r["n"]) for r in pg(stack.dsn, f"SELECT k, v, n FROM {target}")}
        assert rows[2] == ("big", 5000)  # the row appears
        assert rows[3] == ("newer", 3)  # the replayed event is older than the row: it changes nothing
        assert 4 not in rows
        stored = {r["id"]: r for r in pg(stack.dsn, "SELECT id, status, resolved_by, note, result FROM cdcpipe_dlq "
                                         "WHERE table_name = $1", f"{ks}.t")}
        assert (stored[by_key[2]]["status"], stored[by_key[2]]["resolved_by"], stored[by_key[2]]["note"]) == (
            "replayed", "e2e-operator", "constraint relaxed")
        assert (stored[by_key[4]]["status"], stored[by_key[4]]["note"]) == ("resolved", "customer withdrew the order")

        # a second replay is a no-op
        rc, out = dlq(pipeline, "replay", str(by_key[2]))
        assert rc == 0 and out[0]["result"] == "already_replayed", out
        assert pg(stack.dsn, "SELECT replays FROM cdcpipe_dlq WHERE id = $1", by_key[2])[0]["replays"] == 1

        # the mirror equals Cassandra for what Cassandra holds (k=4 was refused; Cassandra holds it)
        cass = {r.k: (r.v, r.n) for r in session.execute(f"SELECT k, v, n FROM {ks}.t")}
        assert {k: v for k, v in cass.items() if k != 4} == rows

        # the same through apply's admin API
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"})
        listed = api.get("/dlq/records", params={"table": f"{ks}.t"}).json()["records"]
        assert {x["id"]: x["status"] for x in listed} == {by_key[2]: "replayed", by_key[3]: "replayed",
                                                          by_key[4]: "resolved"}
        assert api.post("/dlq/replay", json={"ids": [by_key[2]]}).json()["outcomes"][0]["result"] == \
            "already_replayed"
        assert api.get("/status").json()["ready"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/dlq/records").status_code == 401
        codes = pipeline.stop()
        assert codes[pipeline.apply.name] == 0, codes
        assert TOKEN not in (pipeline.workdir / "apply.log").read_text()
