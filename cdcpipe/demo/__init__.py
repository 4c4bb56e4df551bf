"""The demo and its test tooling: a seeded workload over every kind of CQL write (:mod:`.workload`), the
comparison of both databases (:mod:`.fidelity`) and ``cdcpipe demo``'s live view (:mod:`.view`).

The product (the core, ``capture``, ``apply``) never imports this package; it may import the product.  Its view
needs the optional extra ``cdcpipe[console]`` (rich).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdcpipe.config import Settings


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``cdcpipe demo``; the demo's modules are imported only when it runs."""
    d = sub.add_parser("demo", help="live replication demo: workload, live view, then compare both databases")
    d.add_argument("--ops", type=int, default=15_000, help="statements of the demo workload")
    d.add_argument("--rate", type=float, default=500.0, help="statements per second at most")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--preload", type=int, default=5000, help="statements written with CDC off before capture "
                   "starts, brought over by cdcpipe snapshot while the workload runs (0: none)")
    d.add_argument("--settle-timeout", type=float, default=180.0)
    d.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from cdcpipe.demo import view

    return view.demo(args, settings)
