"""The one runner of ``cdcpipe`` processes (capture, apply) for tests and benches, their ``/health`` and
``/metrics``, and unique names and free ports for what a test starts."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.support.stack import ROOT


def unique(prefix: str, digits: int = 10) -> str:
    """``prefix`` and ``digits`` random hex digits: a name no other run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:digits]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CdcpipeProcess:
    """``cdcpipe <command>`` (``python -m cdcpipe``) as a child process with the environment ``env``, its output
    appended to ``log`` (a line marks each start).  With ``http``, it serves ``/health`` and ``/metrics`` on a
    free loopback port of its own (:attr:`port`)."""

    def __init__(self, command: str, env: Mapping[str, str], log: Path, *, name: str | None = None,
                 http: bool = False) -> None:
        self.command, self.log, self.name = command, log, name or command
        self.port: int | None = None
        self.env = dict(env)
        if http:
            self.port = free_port()
            self.env.update({"CDCPIPE_OBSERVABILITY__HTTP_PORT": str(self.port),
                             "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1"})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> Self:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n==== start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", self.command], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 (when it runs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)
            self.kills += 1

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took).  Not exiting within ``timeout`` raises."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        """The last ``n`` lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ------------------------------------------------------------------------------------------ HTTP

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """(status, body) of ``GET path``; OSError when nothing answers."""
        assert self.port is not None, f"{self.name} was started without its HTTP server"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/health")
        return status, dict(json.loads(body))

    def metrics_text(self) -> str:
        """``/metrics`` as served; it must answer 200."""
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}`` (empty when it does not answer)."""
        try:
            status, body = self.get("/metrics", timeout=2)
        except OSError:
            return {}
        return parse_metrics(body.decode()) if status == 200 else {}

    def wait_http(self, timeout: float = 30) -> None:
        """Until its HTTP server answers; it must keep running meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.running, self.tail()
            try:
                self.get("/health")
                return
            except OSError:
                assert time.monotonic() < deadline, f"{self.name}'s HTTP server did not start"
                time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- metrics

def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{"name{labels}": value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metric_sum(metrics: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def metric(text: str, name: str, **labels: str) -> float:
    """:func:`metric_sum` of Prometheus text."""
    return metric_sum(parse_metrics(text), name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` with exactly these labels (None when absent)."""
    for key, value in parse_metrics(text).items():
        base, _, rest = key.partition("{")
        got = {}
        if rest:
            for part in rest[:-1].split(","):
                k, _, v = part.partition("=")
                got[k] = v.strip('"')
        if base == name and got == labels:
            return value
    return None
