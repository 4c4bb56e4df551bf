"""The local stack (``deploy/local/stack``) as tests and benches drive it: the one runner for the script, its
``env`` output, a stack's service addresses (:class:`StackEnv`) and private stacks of their own.

A *knobs* mapping holds ``CDCPIPE_STACK_*`` settings (state folder, addresses, services) that select a stack other
than the shared one."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack"


def stack(*args: str, env: Mapping[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``deploy/local/stack ARGS`` in ``env`` (default: this process's environment), output captured; a failure is
    returned, not raised."""
    return subprocess.run([str(STACK), *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=None if env is None else dict(env))


def knobs_env(knobs: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with its ``CDCPIPE_STACK_*`` knobs replaced by ``knobs``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDCPIPE_STACK_")}
    env.update(knobs)
    return env


def stack_cmd(knobs: Mapping[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``deploy/local/stack ARGS`` for the stack that ``knobs`` select."""
    return stack(*args, env=knobs_env(knobs), timeout=timeout)


def parse_env(output: str) -> dict[str, str]:
    """The variables of ``deploy/local/stack env`` output (``export KEY=value`` lines)."""
    env: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


@dataclass(frozen=True)
class StackEnv:
    """Where a stack's services are: ``env`` is the ``deploy/local/stack env`` output (CDCPIPE_* settings)."""

    env: dict[str, str]

    @property
    def hosts(self) -> list[str]:
        return [h.rsplit(":", 1)[0] for h in self.env["CDCPIPE_CASSANDRA__HOSTS"].split(",")]

    @property
    def cdc_raw_dirs(self) -> list[str]:
        return [self.env[f"CDCPIPE_STACK_CDC_RAW_DIR_{i}"] for i in range(1, len(self.hosts) + 1)]

    @property
    def bootstrap(self) -> str:
        return self.env["CDCPIPE_KAFKA__BOOTSTRAP_SERVERS"]

    @property
    def dsn(self) -> str:
        return self.env["CDCPIPE_POSTGRES__DSN"]


def stack_env_of(knobs: Mapping[str, str]) -> StackEnv:
    """The service addresses of the stack that ``knobs`` select."""
    out = stack_cmd(knobs, "env")
    assert out.returncode == 0, out.stderr
    return StackEnv(parse_env(out.stdout))


def stack_dir() -> Path:
    """The shared stack's state folder (``CDCPIPE_STACK_DIR``, default ``.stack``); private stacks keep theirs
    under its ``aux/``, and share its download cache."""
    return Path(os.environ.get("CDCPIPE_STACK_DIR", str(ROOT / ".stack")))


@contextlib.contextmanager
def private_stack(knobs: Mapping[str, str], nodes: int = 1, *, tls: bool = False) -> Iterator[StackEnv]:
    """A stack of its own (state folder and addresses from ``knobs``; in TLS mode with ``tls``), purged
    afterwards."""
    try:
        up = stack_cmd(knobs, "up", *(["--nodes", str(nodes)] if nodes > 1 else []), *(["--tls"] if tls else []),
                       timeout=900)
        assert up.returncode == 0, f"private stack did not start:\n{up.stderr[-3000:]}"
        yield stack_env_of(knobs)
    finally:
        down = stack_cmd(knobs, "down", "--purge", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
