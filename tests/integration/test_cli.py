"""`cdcpipe check` against the real stack, through the installed console script and `python -m cdcpipe`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_check_reaches_every_service(stack_env: dict[str, str]) -> None:
    out = subprocess.run([str(BIN / "cdcpipe"), "check"], capture_output=True, text=True, timeout=120,
                         env=os.environ.copy())
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["cassandra", "kafka", "postgres"]
    assert all(line.split()[1] == "ok" for line in lines)
    assert "Cassandra 5.0" in out.stdout and "PostgreSQL" in out.stdout


def test_check_names_the_unreachable_service(stack_env: dict[str, str]) -> None:
    env = {**os.environ, "CDCPIPE_POSTGRES__DSN": "postgresql://cdcpipe:wrong@127.0.0.1:1/cdcpipe"}
    out = subprocess.run([sys.executable, "-m", "cdcpipe", "check", "postgres"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert out.stdout.startswith("postgres") and "FAILED" in out.stdout
    assert "wrong" not in out.stdout  # the password of the DSN is not echoed
