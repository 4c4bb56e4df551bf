"""``cdcpipe status``: the live figures of a running capture and apply, read from their ``/metrics``.

The view uses ``rich`` (the optional extra ``cdcpipe[console]``); without it the command says so in one line.
``cdcpipe demo`` shows the same view while its workload runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cdcpipe.config import DEFAULT_HTTP_PORTS, Settings
from cdcpipe.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console, Group

PORTS_FILE = "ports.json"


def run_dir() -> Path:
    """Where ``cdcpipe demo`` keeps its processes' logs and ports (``<stack dir>/run``)."""
    stack = os.environ.get("CDCPIPE_STACK_DIR") or str(Path.cwd() / ".stack")
    return Path(stack) / "run"


def console_for_output() -> Console:
    """A rich console: full width on a terminal, 140 columns into a file or pipe."""
    try:
        from rich.console import Console
    except ImportError as exc:
        raise ConfigError("this command's view needs the optional package rich: pip install 'cdcpipe[console]'") \
            from exc
    return Console() if sys.stdout.isatty() else Console(width=140)


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
    dropped_tables: float = 0.0  # capture dead letters of tables no longer in the schema (counted in dlq too)
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
        elif name == "cdcpipe_capture_dead_letter_records_total" and lab.get("cause") == "unknown_table":
            f.dropped_tables += value  # mutations of tables dropped since: kept in the DLQ topic, not lost data
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
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

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
    held = now.dlq - now.dropped_tables
    dropped = f" (+{now.dropped_tables:.0f} of dropped tables)" if now.dropped_tables else ""
    line = Text(f"{state}   capture lag {now.capture_lag_s:.1f}s   duplicates skipped {now.duplicates:.0f}   "
                f"dead letters {held:.0f}{dropped}", style="bold red" if held else "")
    return Group(table, line, Text(footer))


def ports(run_dir: Path) -> tuple[str, str]:
    """capture's and apply's ``/metrics`` URLs: those of the demo's run folder, else the default ports (9400,
    9401) on loopback."""
    try:
        data = json.loads((run_dir / PORTS_FILE).read_text())
        return f"http://127.0.0.1:{data['capture']}/metrics", f"http://127.0.0.1:{data['apply']}/metrics"
    except (OSError, ValueError, KeyError):
        return (f"http://127.0.0.1:{DEFAULT_HTTP_PORTS['capture']}/metrics",
                f"http://127.0.0.1:{DEFAULT_HTTP_PORTS['apply']}/metrics")


def status(args: argparse.Namespace, settings: Settings) -> int:
    """``cdcpipe status``: the live figures of a running capture and apply (from their /metrics)."""
    cap_default, app_default = ports(run_dir())
    cap_url, app_url = args.capture_url or cap_default, args.apply_url or app_default
    console = console_for_output()
    before = figures(cap_url, app_url)
    time.sleep(args.interval)
    while True:
        now = figures(cap_url, app_url)
        console.print(render(now, before, f"cdcpipe status ({cap_url}, {app_url})"))
        if not args.watch:
            return 0 if all(now.up.values()) else 1
        before = now
        time.sleep(args.interval)


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("status", help="live figures of the running capture and apply (from their /metrics)")
    s.add_argument("--capture-url", help="capture's /metrics URL (default: from the demo's run folder, else "
                   "http://127.0.0.1:9400/metrics)")
    s.add_argument("--apply-url", help="apply's /metrics URL (default: ... else http://127.0.0.1:9401/metrics)")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between the two samples of a rate")
    s.add_argument("--watch", action="store_true", help="print again every interval until Ctrl-C")
    s.set_defaults(func=status)
