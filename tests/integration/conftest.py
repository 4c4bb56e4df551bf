"""Session fixtures for tests against the real local stack (Cassandra, Kafka, PostgreSQL on loopback).

The stack is started with ``deploy/local/stack up`` when it is not already healthy (that call is idempotent);
its ``env`` output configures both cdcpipe and these tests.  Nothing here is ever skipped: a stack that cannot
start fails the session with the stack's own message.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdcpipe.config import Settings, load_settings
from tests.topics import delete_topics, topics_with_prefix

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack"


def stack(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    up = stack("up")
    if up.returncode != 0:
        pytest.fail(f"deploy/local/stack up failed:\n{up.stderr}", pytrace=False)
    out = stack("env")
    assert out.returncode == 0, out.stderr
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
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


TEST_TOPIC_PREFIXES = ("it", "e2e")  # every topic prefix, group and table name the tests make up starts so


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    return load_settings()
