"""The ``cdcpipe`` command line (also ``python -m cdcpipe``).

Every subcommand reads settings the same way (environment, then ``--config FILE``) and turns a bad setting
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from cdcpipe import __version__, pgconn
from cdcpipe.config import Settings, load_settings
from cdcpipe.errors import CdcpipeError, ConfigError

EXIT_CONFIG = 2


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    data = settings.redacted()
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=True), end="")
    return 0


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from cdcpipe.ops import check

    probes = check(settings, args.services)
    for p in probes:
        print(f"{p.service:<10} {'ok' if p.ok else 'FAILED':<7} {p.seconds:6.2f}s  {p.detail}")
    return 0 if all(p.ok for p in probes) else 1


def _add_dump(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cdcpipe.capture import dump

    parser = sub.add_parser("dump", help="print the mutations in commit-log segments as JSON lines")
    dump.add_arguments(parser)

    def run(args: argparse.Namespace, settings: Settings) -> int:
        return dump.run(args)

    parser.set_defaults(func=run)


def _add_processes(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The two long-lived processes, started the same way: ``<side>.pipeline.main(settings)`` (see
    :func:`cdcpipe.runtime.serve`); each is imported only when chosen."""
    def apply(args: argparse.Namespace, settings: Settings) -> int:
        from cdcpipe.apply import pipeline

        return pipeline.main(settings)

    def capture(args: argparse.Namespace, settings: Settings) -> int:
        from cdcpipe.capture import pipeline

        return pipeline.main(settings)

    app = sub.add_parser("apply", help="apply change events from Kafka to PostgreSQL (runs until SIGTERM)")
    app.set_defaults(func=apply, own_credentials=True)  # it keeps its logins valid itself (cdcpipe.credentials)
    cap = sub.add_parser("capture", help="stream this node's CDC segments to Kafka as Avro change events")
    cap.set_defaults(func=capture, own_credentials=True)


def _add_migrate_state(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("migrate-state", help="rewrite apply's stored merge states written by cdcpipe before 0.2 "
                            "(format 1, jsonb) in today's format; stop every apply process first")

    def run(args: argparse.Namespace, settings: Settings) -> int:
        import asyncio

        from cdcpipe.apply.migrate import migrate

        async def go() -> int:
            conn = await pgconn.connect(settings)
            try:
                done = await migrate(conn)
            finally:
                await conn.close()
            for m in done:
                print(f"{m.schema}.{m.relation}: {m.rows} rows rewritten")
            print(f"{len(done)} relation(s) migrated" if done else "nothing to migrate: every stored state is format 2")
            return 0
        return asyncio.run(go())

    parser.set_defaults(func=run)


def _add_tool(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
              module_name: str | None = None) -> None:
    """``cdcpipe <name>``: a one-shot command whose module (default ``cdcpipe.<name>.pipeline``) has
    ``add_arguments`` and ``main(settings, args)``."""
    parser = sub.add_parser(name, help=help_text)
    module = importlib.import_module(module_name or f"cdcpipe.{name}.pipeline")

    def run(args: argparse.Namespace, settings: Settings) -> int:
        code: int = module.main(settings, args)
        return code

    module.add_arguments(parser)
    parser.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cdcpipe import demo, status

    demo.add_command(sub)
    status.add_command(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdcpipe", description="Cassandra CDC to PostgreSQL through Kafka.")
    parser.add_argument("--version", action="version", version=f"cdcpipe {__version__}")
    parser.add_argument("--config", type=Path, help="YAML settings file (environment variables override it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="print the effective settings (secrets hidden)")
    cfg.add_argument("--format", choices=["yaml", "json"], default="yaml")
    cfg.set_defaults(func=_cmd_config, own_credentials=True)  # the settings as given: Vault is not asked

    chk = sub.add_parser("check", help="check that Cassandra, Kafka and PostgreSQL are reachable")
    chk.add_argument("services", nargs="*", choices=["cassandra", "kafka", "postgres", []], default=[],
                     help="services to check (default: all)")
    chk.set_defaults(func=_cmd_check)

    _add_dump(sub)
    # (subcommands of the capture and apply processes are added below this line)
    _add_processes(sub)
    _add_migrate_state(sub)
    _add_tool(sub, "snapshot", "load the rows tables already hold, with their write times, into the event topics "
              "(run it while capture and apply run)")
    _add_tool(sub, "reconcile", "compare PostgreSQL with Cassandra by token range, record the drift, and with "
              "--repair fix it through the pipeline (exit 0 equal, 1 drift, 2 could not run)")
    _add_tool(sub, "dlq", "apply's dead letters: list, show, replay through apply's path (the merge decides), "
              "resolve")
    _add_tool(sub, "erase", "GDPR erasure: delete keys in Cassandra, wait until apply removed them from PostgreSQL, "
              "remove their dead letters, confirm, audit (exit 0 erased, 1 not confirmed, 2 could not run)",
              "cdcpipe.reconcile.erase")
    _add_demo(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    resolved = None
    try:
        settings = load_settings(args.config)
        if settings.vault.url and not getattr(args, "own_credentials", False):
            from cdcpipe.credentials import resolve  # a one-shot command: its logins, revoked when it ends

            resolved = resolve(settings)
            settings = resolved.settings
        return func(args, settings)
    except ConfigError as exc:
        print(f"cdcpipe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CdcpipeError as exc:
        print(f"cdcpipe: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if resolved is not None:
            resolved.close()
