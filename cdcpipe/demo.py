"""``cdcpipe demo`` (what ``make run`` shows) and ``cdcpipe status``.

The demo creates the ``demo`` keyspace (:mod:`cdcpipe.workload`: scalars, collections, a UDT, statics, clustering
columns, TTL, every CQL type), starts ``cdcpipe capture`` and ``cdcpipe apply`` as background processes (logs and
ports under ``<stack dir>/run/``), drives the seeded workload while a live ``rich`` view shows per table the events
captured and applied per second, the consumer lag and the dead letters, waits until apply caught up, then compares
both databases table by table (:mod:`cdcpipe.fidelity`: rows and a content checksum).  It exits 0 when they
match, 1 when they differ, 130 on Ctrl-C — every process it started is stopped in each case.

``cdcpipe status`` prints the same figures from the two processes' ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cdcpipe import fidelity, workload
from cdcpipe.config import Settings

KEYSPACE = "demo"
PORTS_FILE = "ports.json"


# ---------------------------------------------------------------------------------------------- figures


def scrape(url: str, timeout: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """Samples of a Prometheus ``/metrics`` page as ``{(name, labels): value}``; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


@dataclass
class Figures:
    """Per table (``ks.t``): events captured and applied (totals), consumer lag; and the dead letters."""

    up: dict[str, bool] = field(default_factory=dict)
    captured: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    applied: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lag: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    duplicates: float = 0.0
    dlq: float = 0.0
    capture_lag_s: float = 0.0
    at: float = field(default_factory=time.monotonic)

    @property
    def tables(self) -> list[str]:
        return sorted(set(self.captured) | set(self.applied) | set(self.lag))


def figures(capture_url: str, apply_url: str) -> Figures:
    f = Figures()
    cap, app = scrape(capture_url), scrape(apply_url)
    f.up = {"capture": cap is not None, "apply": app is not None}
    for (name, labels), value in (cap or {}).items():
        lab = dict(labels)
        if name == "cdcpipe_capture_events_produced_total":
            f.captured[f"{lab['keyspace']}.{lab['table']}"] += value
        elif name == "cdcpipe_capture_dead_letters_total":
            f.dlq += value
        elif name == "cdcpipe_capture_lag_seconds":
            f.capture_lag_s = value
    for (name, labels), value in (app or {}).items():
        lab = dict(labels)
        if name == "cdcpipe_apply_events_applied_total":
            f.applied[lab["table"]] += value
        elif name == "cdcpipe_apply_dlq_events_total":
            f.dlq += value
        elif name == "cdcpipe_apply_duplicates_total":
            f.duplicates += value
        elif name == "cdcpipe_apply_consumer_lag":
            f.lag[".".join(lab["topic"].split(".")[-2:])] += value
    return f


def render(now: Figures, before: Figures | None, title: str, footer: str = "") -> Group:
    """The live view: one line per table, then the totals."""
    dt = max(1e-3, now.at - before.at) if before is not None else 0.0
    table = Table(title=title, title_justify="left")
    for col in ("table", "captured", "captured/s", "applied", "applied/s", "lag (events)"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for t in now.tables:
        cap_rate = (now.captured[t] - before.captured.get(t, 0)) / dt if before is not None and dt else 0.0
        app_rate = (now.applied[t] - before.applied.get(t, 0)) / dt if before is not None and dt else 0.0
        table.add_row(t, f"{now.captured.get(t, 0):.0f}", f"{cap_rate:.0f}", f"{now.applied.get(t, 0):.0f}",
                      f"{app_rate:.0f}", f"{now.lag.get(t, 0):.0f}")
    state = "  ".join(f"{k}: {'up' if v else 'DOWN'}" for k, v in now.up.items())
    line = Text(f"{state}   capture lag {now.capture_lag_s:.1f}s   duplicates skipped {now.duplicates:.0f}   "
                f"dead letters {now.dlq:.0f}", style="bold red" if now.dlq else "")
    return Group(table, line, Text(footer))


def _ports(run_dir: Path) -> tuple[str, str]:
    try:
        data = json.loads((run_dir / PORTS_FILE).read_text())
        return f"http://127.0.0.1:{data['capture']}/metrics", f"http://127.0.0.1:{data['apply']}/metrics"
    except (OSError, ValueError, KeyError):
        return "http://127.0.0.1:9401/metrics", "http://127.0.0.1:9402/metrics"


def status(args: argparse.Namespace, settings: Settings) -> int:
    """``cdcpipe status``: the live figures of a running capture and apply (from their /metrics)."""
    cap_default, app_default = _ports(_run_dir())
    cap_url, app_url = args.capture_url or cap_default, args.apply_url or app_default
    console = _console()
    before = figures(cap_url, app_url)
    time.sleep(args.interval)
    while True:
        now = figures(cap_url, app_url)
        console.print(render(now, before, f"cdcpipe status ({cap_url}, {app_url})"))
        if not args.watch:
            return 0 if all(now.up.values()) else 1
        before = now
        time.sleep(args.interval)


# ---------------------------------------------------------------------------------------------- the demo


def _run_dir() -> Path:
    stack = os.environ.get("CDCPIPE_STACK_DIR") or str(Path.cwd() / ".stack")
    return Path(stack) / "run"


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


class Child:
    """A ``cdcpipe`` subcommand in its own session (Ctrl-C reaches the demo, which stops it in order)."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", command], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=140)


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from cassandra.cluster import Cluster

    console = _console()
    run_dir = _run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    hosts = [h for h, _ in settings.cassandra.contact_points()]
    dsn = settings.require("postgres.dsn").get_secret_value()
    cdc_raw = str(settings.require("capture.cdc_raw_dir"))
    prefix = f"demo{int(time.time())}"
    ports = {"capture": _free_port(9401), "apply": _free_port(9402)}
    (run_dir / PORTS_FILE).write_text(json.dumps(ports) + "\n")
    cluster = Cluster(hosts, protocol_version=5, connect_timeout=20)
    session = cluster.connect()
    children: list[Child] = []
    stop = threading.Event()
    try:
        console.print(f"[bold]cdcpipe demo[/]: keyspace [cyan]{KEYSPACE}[/], topic prefix [cyan]{prefix}[/], "
                      f"logs in {run_dir}")
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
        asyncio.run(fidelity.drop_mirror(dsn, KEYSPACE))
        for stmt in workload.schema(KEYSPACE):
            session.execute(stmt, timeout=60)
        base = {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1",
                "CDCPIPE_OBSERVABILITY__LOG_FORMAT": "json"}
        children.append(Child("capture", {**base, "CDCPIPE_CAPTURE__CDC_RAW_DIR": cdc_raw,
                                          "CDCPIPE_CAPTURE__INCLUDE_TABLES": f"{KEYSPACE}.*",
                                          "CDCPIPE_CAPTURE__NODE_ID": "demo-node-1",
                                          "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(ports["capture"])},
                              run_dir / "capture.log"))
        children.append(Child("apply", {**base, "CDCPIPE_APPLY__GROUP_ID": prefix,
                                        "CDCPIPE_APPLY__PURGE_INTERVAL_S": "1",
                                        "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(ports["apply"])},
                              run_dir / "apply.log"))
        cap_url, app_url = _ports(run_dir)
        wl = workload.Workload(KEYSPACE, args.seed)
        tally = workload.Tally()
        driver = threading.Thread(target=lambda: workload.drive(session, wl, args.ops, rate=args.rate, stop=stop,
                                                                tally=tally), name="workload", daemon=True)
        driver.start()
        before = figures(cap_url, app_url)
        settled_since: float | None = None
        last_write = time.monotonic()
        with Live(render(before, None, "replication"), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(1.0)
                for c in children:
                    if c.proc.poll() is not None:
                        raise RuntimeError(f"{c.command} exited with {c.proc.returncode}; see {c.log}")
                now = figures(cap_url, app_url)
                writing = driver.is_alive()
                if writing:
                    last_write = time.monotonic()
                total_cap, total_app = sum(now.captured.values()), sum(now.applied.values())
                caught_up = (not writing and total_cap > 0 and total_cap == total_app and not any(now.lag.values())
                             and time.monotonic() - last_write > workload.SHORT_TTL_MAX_S + 2)
                settled_since = (settled_since or time.monotonic()) if caught_up else None
                phase = (f"workload: {tally.done} of {args.ops} statements at ≤ {args.rate:.0f}/s"
                         if writing else "workload done; waiting until apply has applied everything "
                         "(and short TTLs expired)")
                live.update(render(now, before, "replication (per table)", phase))
                before = now
                if settled_since is not None and time.monotonic() - settled_since >= 3:
                    break
                if not writing and time.monotonic() - last_write > args.settle_timeout:
                    raise RuntimeError(f"apply did not catch up within {args.settle_timeout:.0f}s")
        if tally.errors:
            console.print(f"[red]workload errors[/]: {tally.errors[:3]}")
        console.print("comparing Cassandra and PostgreSQL table by table ...")
        report = asyncio.run(_compare(hosts, session, dsn))
        out = Table(title="Cassandra vs PostgreSQL", title_justify="left")
        for col in ("table", "cassandra rows", "postgres rows", "static-only", "cassandra sha256",
                    "postgres sha256", "mismatches", "result"):
            out.add_column(col)
        for t in report.tables:
            out.add_row(t.table, str(t.cassandra_rows), str(t.postgres_rows), str(t.static_only),
                        t.cassandra_checksum, t.postgres_checksum, str(len(t.mismatches)),
                        "[green]match[/]" if t.ok else "[red]DIFFER[/]")
        console.print(out)
        for m in report.mismatches[:20]:
            console.print(f"  [red]{m}[/]")
        final = figures(cap_url, app_url)
        console.print(f"dead letters: {final.dlq:.0f}; static-only partitions are compared against "
                      "\"<table>$partition\" (ADR 0002)")
        ok = report.ok and not final.dlq and not tally.errors
        console.print("[bold green]PostgreSQL matches Cassandra.[/]" if ok
                      else "[bold red]PostgreSQL differs from Cassandra.[/]")
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping the workload, capture and apply ...")
        return 130
    finally:
        stop.set()
        for c in reversed(children):
            rc = c.stop()
            console.print(f"{c.command} stopped (exit {rc}); log {c.log}")
        cluster.shutdown()


async def _compare(hosts: list[str], session: Any, dsn: str) -> fidelity.Report:
    import asyncpg

    tables = await asyncio.to_thread(fidelity.load_tables, session, KEYSPACE)
    raw_cluster, raw = await asyncio.to_thread(fidelity.raw_session, hosts)
    conn = await asyncpg.connect(dsn)
    try:
        return await fidelity.compare(raw, conn, tables)
    finally:
        await conn.close()
        await asyncio.to_thread(raw_cluster.shutdown)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("demo", help="live replication demo: workload, live view, then compare both databases")
    d.add_argument("--ops", type=int, default=15_000, help="statements of the demo workload")
    d.add_argument("--rate", type=float, default=500.0, help="statements per second at most")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--settle-timeout", type=float, default=180.0)
    d.set_defaults(func=demo)
    s = sub.add_parser("status", help="live figures of the running capture and apply (from their /metrics)")
    s.add_argument("--capture-url", help="capture's /metrics URL (default: from the demo's run folder)")
    s.add_argument("--apply-url", help="apply's /metrics URL")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between the two samples of a rate")
    s.add_argument("--watch", action="store_true", help="print again every interval until Ctrl-C")
    s.set_defaults(func=status)

