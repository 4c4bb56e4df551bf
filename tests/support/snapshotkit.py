"""Running ``cdcpipe snapshot`` as a child process of a test pipeline, killing it, and reading its summary."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.harness import Pipeline
from tests.support.stack import ROOT

_DONE = re.compile(r"snapshot done: (\d+) tables, (\d+) rows, (\d+) events, (\d+) ranges read, "
                   r"(\d+) finished earlier")


@dataclass
class SnapshotRun:
    returncode: int
    output: str
    killed: bool = False

    def _done(self) -> re.Match[str]:
        m = _DONE.search(self.output)
        assert m is not None, f"no summary line (exit {self.returncode}):\n{self.output[-3000:]}"
        return m

    @property
    def rows(self) -> int:
        return int(self._done().group(2))

    @property
    def ranges_read(self) -> int:
        return int(self._done().group(4))

    @property
    def ranges_resumed(self) -> int:
        return int(self._done().group(5))


def run_snapshot(pipeline: Pipeline, *args: str, kill_after_s: float | None = None,
                 timeout_s: float = 600) -> SnapshotRun:
    """``cdcpipe snapshot --tables <keyspace>.* --progress json *args``; with ``kill_after_s``, ``kill -9`` it
    that many seconds after it started (unless it finished first)."""
    cmd = [sys.executable, "-m", "cdcpipe", "snapshot", "--tables", f"{pipeline.keyspace}.*", "--progress", "json",
           *args]
    log = pipeline.workdir / "snapshot.log"
    proc = subprocess.Popen(cmd, env=pipeline.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True)
    reader.start()
    killed = False
    if kill_after_s is not None:
        try:
            proc.wait(kill_after_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            killed = True
    rc = proc.wait(timeout_s)
    reader.join(10)
    text = "".join(out)
    with log.open("a") as f:
        f.write(f"==== {' '.join(cmd[3:])} at {time.time():.3f} (exit {rc}{', killed' if killed else ''})\n{text}")
    return SnapshotRun(rc, text, killed)


def snapshot_during(runs: list[SnapshotRun], *, kill_after_s: float | None, args: tuple[str, ...] = (),
                    delay_s: float = 1.0) -> Callable[[Pipeline, threading.Event], list[str]]:
    """A ``during`` hook of :func:`tests.support.harness.run_fidelity`: a snapshot while the workload writes,
    killed (-9) after ``kill_after_s`` and then resumed; the runs are appended to ``runs``."""

    def during(pipeline: Pipeline, done: threading.Event) -> list[str]:
        time.sleep(delay_s)
        first = run_snapshot(pipeline, *args, kill_after_s=kill_after_s)
        runs.append(first)
        log = [f"snapshot exit {first.returncode}{' (kill -9)' if first.killed else ''}"]
        if first.killed:
            second = run_snapshot(pipeline, *args, "--resume")
            runs.append(second)
            log.append(f"snapshot --resume exit {second.returncode}")
        return log

    return during
