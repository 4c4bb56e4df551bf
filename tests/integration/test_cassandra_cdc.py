"""Cassandra 5.0 with CDC: writes to a cdc table show up in cdc_raw within the commit-log sync period."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from cassandra.cluster import Session

from cdcpipe.config import Settings


@pytest.fixture(scope="module", autouse=True)
def it_stack(session: Session) -> None:
    """The keyspace ``it_stack``."""
    session.execute("CREATE KEYSPACE IF NOT EXISTS it_stack WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")


def idx_offsets(cdc_raw: Path) -> dict[str, int]:
    """Durable offset of every ``_cdc.idx`` (an empty file is being rewritten: read as 0)."""
    out = {}
    for idx in cdc_raw.glob("CommitLog-*_cdc.idx"):
        first = idx.read_text().split("\n", 1)[0].strip()
        out[idx.name] = int(first) if first.isdigit() else 0
    return out


def wait_for_growth(cdc_raw: Path, before: dict[str, int], limit: float) -> dict[str, int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = idx_offsets(cdc_raw)
        if any(off > before.get(name, 0) for name, off in now.items()):
            return now
        time.sleep(0.05)
    raise AssertionError(f"no _cdc.idx offset grew within {limit}s: before {before}, now {idx_offsets(cdc_raw)}")


def test_cdc_table_writes_reach_cdc_raw_within_2s(session: Session, settings: Settings) -> None:
    cdc_raw = settings.require("capture.cdc_raw_dir")
    table = f"t_{uuid.uuid4().hex[:8]}"
    session.execute(f"CREATE TABLE it_stack.{table} (id int PRIMARY KEY, v text) WITH cdc = true")
    insert = session.prepare(f"INSERT INTO it_stack.{table} (id, v) VALUES (?, ?)")

    before = idx_offsets(cdc_raw)
    for i in range(100):
        session.execute(insert, (i, f"value {i}"))
    first = wait_for_growth(cdc_raw, before, 2.0)
    for name in first:
        assert (cdc_raw / name.replace("_cdc.idx", ".log")).exists(), "idx without its hard-linked segment"

    for i in range(100, 200):
        session.execute(insert, (i, f"value {i}"))
    wait_for_growth(cdc_raw, first, 2.0)
