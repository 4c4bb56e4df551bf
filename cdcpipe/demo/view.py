"""``cdcpipe demo``: what ``make run`` shows.

The demo creates the ``demo`` keyspace (:mod:`cdcpipe.demo.workload`: scalars, collections, a UDT, statics, clustering
columns, TTL, every CQL type), starts ``cdcpipe capture`` and ``cdcpipe apply`` as background processes (logs and
ports under ``<stack dir>/run/``), and with ``--preload`` first writes rows with CDC off and runs ``cdcpipe
snapshot`` to bring them over while it drives the seeded workload while a live ``rich`` view shows per table the events
captured and applied per second, the consumer lag and the dead letters, waits until apply caught up, then compares
both databases table by table (:mod:`cdcpipe.demo.fidelity`: rows and a content checksum).  It exits 0 when they
match, 1 when they differ, 130 on Ctrl-C — every process it started is stopped in each case.

Its live view is ``cdcpipe status``'s (:mod:`cdcpipe.status`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table

from cdcpipe.config import DEFAULT_HTTP_PORTS, Settings
from cdcpipe.demo import fidelity, workload
from cdcpipe.status import PORTS_FILE, console_for_output, figures, ports, render, run_dir

KEYSPACE = "demo"


# ---------------------------------------------------------------------------------------------- the demo


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

    def __init__(self, command: str, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.command, self.env, self.log = command, env, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdcpipe", command, *args], env=env, stdout=out,
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


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from cassandra.cluster import Cluster

    console = console_for_output()
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    hosts = [h for h, _ in settings.cassandra.contact_points()]
    dsn = settings.require("postgres.dsn").get_secret_value()
    cdc_raw = str(settings.require("capture.cdc_raw_dir"))
    prefix = f"demo{int(time.time())}"
    chosen = {process: _free_port(port) for process, port in DEFAULT_HTTP_PORTS.items()}
    (folder / PORTS_FILE).write_text(json.dumps(chosen) + "\n")
    cluster = Cluster(hosts, protocol_version=5, connect_timeout=20)
    session = cluster.connect()
    children: list[Child] = []
    stop = threading.Event()
    try:
        console.print(f"[bold]cdcpipe demo[/]: keyspace [cyan]{KEYSPACE}[/], topic prefix [cyan]{prefix}[/], "
                      f"logs in {folder}")
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
        asyncio.run(fidelity.drop_mirror(dsn, KEYSPACE))
        for stmt in workload.schema(KEYSPACE):
            session.execute(stmt, timeout=60)
        if args.preload:
            console.print(f"writing {args.preload} statements with CDC off (data only a snapshot can bring over) ...")
            workload.write_without_cdc(session, KEYSPACE, args.preload, args.seed + 1)
        base = {**os.environ, "CDCPIPE_KAFKA__TOPIC_PREFIX": prefix, "CDCPIPE_OBSERVABILITY__HTTP_HOST": "127.0.0.1",
                "CDCPIPE_OBSERVABILITY__LOG_FORMAT": "json"}
        children.append(Child("capture", {**base, "CDCPIPE_CAPTURE__CDC_RAW_DIR": cdc_raw,
                                          "CDCPIPE_CAPTURE__INCLUDE_TABLES": f"{KEYSPACE}.*",
                                          "CDCPIPE_CAPTURE__NODE_ID": "demo-node-1",
                                          "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(chosen["capture"])},
                              folder / "capture.log"))
        children.append(Child("apply", {**base, "CDCPIPE_APPLY__GROUP_ID": prefix,
                                        "CDCPIPE_APPLY__PURGE_INTERVAL_S": "1",
                                        "CDCPIPE_OBSERVABILITY__HTTP_PORT": str(chosen["apply"])},
                              folder / "apply.log"))
        cap_url, app_url = ports(folder)
        snapshot = Child("snapshot", base, folder / "snapshot.log",
                         ("--tables", f"{KEYSPACE}.*", "--progress", "json")) if args.preload else None
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
                snapshot_events = snapshot_result(snapshot)
                now = figures(cap_url, app_url)
                writing = driver.is_alive() or snapshot_events is None
                if writing:
                    last_write = time.monotonic()
                total_cap, total_app = sum(now.captured.values()) + (snapshot_events or 0), sum(now.applied.values())
                caught_up = (not writing and total_cap > 0 and total_cap == total_app and not any(now.lag.values())
                             and time.monotonic() - last_write > workload.SHORT_TTL_MAX_S + 2)
                settled_since = (settled_since or time.monotonic()) if caught_up else None
                phase = (f"workload: {tally.done} of {args.ops} statements at ≤ {args.rate:.0f}/s"
                         + ("; snapshot of the preloaded rows running" if snapshot_events is None else
                            f"; snapshot done: {snapshot_events} events" if snapshot is not None else "")
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
        held = final.dlq - final.dropped_tables
        if final.dropped_tables:
            console.print(f"{final.dropped_tables:.0f} mutations of tables dropped earlier (older segments in "
                          "cdc_raw) went to the capture DLQ topic: not data of these tables")
        console.print(f"dead letters: {held:.0f}; static-only partitions are compared against "
                      "\"<table>$partition\" (ADR 0002)")
        ok = report.ok and not held and not tally.errors
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


def snapshot_result(snapshot: Child | None) -> int | None:
    """The events the snapshot produced once it is done (0 without one); None while it runs.  A failed snapshot
    raises RuntimeError."""
    if snapshot is None:
        return 0
    if snapshot.proc.poll() is None:
        return None
    found = re.findall(r"snapshot done: .* (\d+) events", snapshot.log.read_text(errors="replace"))
    if snapshot.proc.returncode != 0 or not found:
        raise RuntimeError(f"snapshot exited with {snapshot.proc.returncode}; see {snapshot.log}")
    return int(found[-1])  # this run's: the log keeps earlier runs


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
