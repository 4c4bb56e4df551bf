"""Every shared fixture of the suite, registered once by ``tests/conftest.py`` (``pytest_plugins``).

Stack fixtures (tests against the real local stack: Cassandra, Kafka, PostgreSQL on loopback, and Vault): the stack
is started with ``deploy/local/stack up --tls`` when it is not already healthy (that call is idempotent); its ``env``
output configures both cdcpipe and the tests.  Nothing here is ever skipped: a stack that cannot start fails the session
with the stack's own message.

Unit fixtures: Cassandra's commit-log test segments and the segment builder (:mod:`tests.support.segments`).

The heavy modules (drivers, cdcpipe) are imported inside the fixtures, so unit runs load none of them for nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import segments

if TYPE_CHECKING:
    from cassandra.cluster import Session

    from cdcpipe.config import Settings


# ---------------------------------------------------------------------------------------------- the stack

@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """The shared stack, up; its ``env`` output, also set in ``os.environ`` for the session.  Topics the session
    created under the test prefixes are deleted at its end."""
    from tests.support.stack import parse_env, stack
    from tests.support.topics import TEST_TOPIC_PREFIXES, delete_topics, topics_with_prefix

    up = stack("up", "--tls")
    if up.returncode != 0:
        pytest.fail(f"deploy/local/stack up failed:\n{up.stderr}", pytrace=False)
    out = stack("env")
    assert out.returncode == 0, out.stderr
    env = parse_env(out.stdout)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    kafka = {"bootstrap.servers": env["CDCPIPE_KAFKA__BOOTSTRAP_SERVERS"]}
    before = topics_with_prefix(kafka, TEST_TOPIC_PREFIXES)
    yield env
    delete_topics(kafka, topics_with_prefix(kafka, TEST_TOPIC_PREFIXES) - before)  # those this session created
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    """cdcpipe's settings for the shared stack."""
    from cdcpipe.config import load_settings

    return load_settings()


@pytest.fixture(scope="module")
def session(settings: Settings) -> Iterator[Session]:
    """A driver session on the shared stack's Cassandra, one per test module."""
    from tests.support.cassandra import cluster

    c = cluster(settings)
    s = c.connect()
    yield s
    c.shutdown()


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """``--long``: end-to-end runs of long-run size."""
    return bool(request.config.getoption("--long", default=False))


# ---------------------------------------------------------------------------------------------- PostgreSQL

@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[Any]:
    """An asyncpg pool on the shared stack's PostgreSQL."""
    import asyncpg

    p = await asyncpg.create_pool(settings.require("postgres.dsn").get_secret_value(), min_size=1, max_size=2)
    yield p
    await p.close()


@pytest.fixture
def prefix() -> str:
    """A schema prefix (and checkpoint group) of the test's own."""
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
async def cleanup(pool: Any, prefix: str) -> AsyncIterator[None]:
    """Afterwards, drop the schemas under ``prefix`` and the checkpoint rows of the group ``prefix``."""
    from tests.support.applykit import drop_run

    yield
    await drop_run(pool, prefix)


# ---------------------------------------------------------------------------------------------- commit-log data

@pytest.fixture(scope="session")
def testdata() -> Path:
    """Cassandra's commit log test data (tests/data/cassandra-commitlog); a missing copy is a failure, never a
    skip."""
    if not (segments.TESTDATA / "README.md").is_file():
        pytest.fail(f"commit log test data missing at {segments.TESTDATA}")
    return segments.TESTDATA


@pytest.fixture(scope="session")
def segment_builder() -> Callable[..., bytes]:
    return segments.build_segment


@pytest.fixture(scope="session")
def entry_encoder() -> Callable[[bytes], bytes]:
    return segments.encode_entry


@pytest.fixture(scope="session")
def hash_props() -> Callable[[Path], dict[str, str]]:
    return segments.read_hash_txt
