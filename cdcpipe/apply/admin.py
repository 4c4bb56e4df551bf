"""The admin HTTP API apply serves (``admin.enabled``; ``admin.host``, default 127.0.0.1, ``admin.port``): dead
letters listed, shown, replayed and resolved (the same store and replay as ``cdcpipe dlq``) and apply's status,
every endpoint behind a bearer token (:mod:`cdcpipe.apply.adminauth`).  The OpenAPI 3.1 document is generated from
these routes and models (FastAPI) and served at ``/openapi.json``; ``docs/openapi.json`` is a copy
(``python -m cdcpipe.apply.admin > docs/openapi.json``, checked by a test)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from cdcpipe.apply import dlqstore as store
from cdcpipe.apply.adminauth import READ, WRITE, Tokens
from cdcpipe.apply.dlqstore import Filter
from cdcpipe.apply.replay import FAILED, Outcome
from cdcpipe.config import Settings, env_name
from cdcpipe.errors import ConfigError

MAX_PAGE = 1000
TEXT = r"^[^\x00]*$"  # PostgreSQL text holds no NUL
BIGINT = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=BIGINT)]


class DeadLetter(BaseModel):
    """One dead letter: coordinates, table, error, resolution; the event's sizes (bytes: ``GET /dlq/records/{id}``)."""

    id: int
    group_id: str
    topic: str
    partition: int
    offset: int
    table: str | None
    error_type: str
    message: str
    retry_count: int
    created_at: datetime.datetime
    status: str = Field(description="pending, failed (a replay failed too), replayed or resolved")
    resolved_at: datetime.datetime | None
    resolved_by: str | None
    note: str | None
    result: str | None
    replays: int
    key_bytes: int | None
    value_bytes: int | None


class DeadLetterDetail(DeadLetter):
    key: str | None = Field(description="the Kafka key (the partition key), hex")
    value: str | None = Field(description="the event as it was read, hex")


class Page(BaseModel):
    records: list[DeadLetter]
    next_after: int | None = Field(description="give it as ``after`` for the next page; null: this is the last")


class ReplayRequest(BaseModel):
    """Dead letters to replay: ``ids``, or a filter (at least one condition)."""

    ids: list[Id] = Field(default_factory=list, max_length=MAX_PAGE)
    table: str | None = Field(default=None, pattern=TEXT, max_length=500)
    topic: str | None = Field(default=None, pattern=TEXT, max_length=500)
    error_type: str | None = Field(default=None, pattern=TEXT, max_length=500)
    status: str | None = Field(default=None, pattern="^(pending|failed|replayed|resolved)$")
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    note: str | None = Field(default=None, max_length=2000, pattern=TEXT)


class ReplayOutcome(BaseModel):
    id: int
    result: str = Field(description="applied, already_replayed (a no-op), not_open (resolved), failed, or "
                              "needs_capture_code (a capture dead letter: replayed by `cdcpipe dlq replay`)")
    table: str | None
    error: str | None


class ReplayResponse(BaseModel):
    outcomes: list[ReplayOutcome]


class ResolveRequest(BaseModel):
    note: str = Field(min_length=1, max_length=2000, pattern=TEXT)


class ResolveResponse(BaseModel):
    id: int
    result: str = Field(description="resolved, or not_open (it was already replayed or resolved)")
    status: str


class ApplyStatus(BaseModel):
    ready: bool
    conditions: dict[str, str]
    dead_letters: dict[str, int] = Field(description="dead letters by status, every table")


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A time as UTC (a naive one is taken as UTC); one PostgreSQL cannot hold is refused (422)."""
    if moment is None:
        return None
    try:
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).astimezone(datetime.UTC)
    except OverflowError:
        raise RequestValidationError([{"loc": ("query",), "msg": "a time beyond the representable range",
                                       "type": "value_error"}]) from None
    return moment


def build(pool: Any, tokens: Tokens, replay: Callable[[int, str | None, str], Awaitable[Outcome]],
          status: Callable[[], tuple[bool, dict[str, str]]]) -> FastAPI:
    """The app: ``replay(id, note, actor)`` replays one dead letter; ``status()`` is apply's readiness."""
    app = FastAPI(title="cdcpipe apply admin API", version="1", openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None, description="Dead letters and status of one cdcpipe apply process. Every endpoint "
                  "needs `Authorization: Bearer <token>`; replay and resolve need a write token.")

    def guard(need: str) -> Callable[[Request], str]:
        def check(request: Request) -> str:
            refusal = tokens.check(request.headers.get("authorization"),
                                   request.client.host if request.client else "?", need)
            if refusal is not None:
                headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
                raise HTTPException(refusal.status, refusal.message, headers=headers)
            return f"admin-api@{request.client.host if request.client else '?'}"  # who acted: recorded
        return check

    refused: dict[int | str, dict[str, Any]] = {401: {"description": "no valid bearer token"},
                                                429: {"description": "too many failed authentications"}}
    writes: dict[int | str, dict[str, Any]] = {**refused, 403: {"description": "a read-only token"}}

    @app.get("/dlq/records", response_model=Page, responses=refused)
    async def records(table: str | None = Query(default=None, pattern=TEXT, max_length=500),
                      topic: str | None = Query(default=None, pattern=TEXT, max_length=500),
                      error_type: str | None = Query(default=None, pattern=TEXT, max_length=500),
                      status_: str | None = Query(default=None, alias="status",
                                                  pattern="^(pending|failed|replayed|resolved)$"),
                      since: datetime.datetime | None = None, until: datetime.datetime | None = None,
                      after: int = Query(default=0, ge=0, le=BIGINT),
                      limit: int = Query(default=100, ge=1, le=MAX_PAGE),
                      _: str = Depends(guard(READ))) -> Page:
        which = Filter(table=table, error_type=error_type, status=status_, topic=topic, since=_utc(since),
                       until=_utc(until), after=after)
        async with pool.acquire() as conn:
            found = await store.find(conn, which, limit)
        return Page(records=[DeadLetter(**x.summary()) for x in found],
                    next_after=found[-1].id if len(found) == limit else None)

    @app.get("/dlq/records/{letter_id}", response_model=DeadLetterDetail,
             responses={**refused, 404: {"description": "no such dead letter"}})
    async def record(letter_id: int = Path(ge=1, le=BIGINT), _: str = Depends(guard(READ))) -> DeadLetterDetail:
        async with pool.acquire() as conn:
            found = await store.get(conn, letter_id)
        if found is None:
            raise HTTPException(404, f"no dead letter {letter_id}")
        return DeadLetterDetail(**found.detail())

    @app.post("/dlq/replay", response_model=ReplayResponse,
              responses={**writes, 400: {"description": "neither ids nor a filter"}})
    async def replay_(body: ReplayRequest, actor: str = Depends(guard(WRITE))) -> ReplayResponse:
        which = Filter(table=body.table, error_type=body.error_type, status=body.status, topic=body.topic,
                       since=_utc(body.since), until=_utc(body.until), ids=tuple(body.ids))
        if not which.chooses:
            raise HTTPException(400, "give ids or a filter (table, topic, error_type, status, since, until)")
        async with pool.acquire() as conn:
            letters = await store.find(conn, which, MAX_PAGE)
        outcomes = [await replay(x.id, body.note, actor) for x in letters]
        return ReplayResponse(outcomes=[ReplayOutcome(id=o.id, result=o.result, table=o.table, error=o.error)
                                        for o in outcomes])

    @app.post("/dlq/records/{letter_id}/resolve", response_model=ResolveResponse,
              responses={**writes, 404: {"description": "no such dead letter"}})
    async def resolve(body: ResolveRequest, letter_id: int = Path(ge=1, le=BIGINT),
                      actor: str = Depends(guard(WRITE))) -> ResolveResponse:
        async with pool.acquire() as conn:
            status = await store.resolve(conn, letter_id, actor, body.note)
        if status is None:
            raise HTTPException(404, f"no dead letter {letter_id}")
        return ResolveResponse(id=letter_id, result="resolved" if status == store.RESOLVED else "not_open",
                               status=status)

    @app.get("/status", response_model=ApplyStatus, responses=refused)
    async def status_view(_: str = Depends(guard(READ))) -> ApplyStatus:
        ready, conditions = status()
        async with pool.acquire() as conn:
            counts = await store.counts(conn)
        by_status: dict[str, int] = {}
        for _table, _error, state, n in counts:
            by_status[state] = by_status.get(state, 0) + n
        return ApplyStatus(ready=ready, conditions=conditions, dead_letters=by_status)

    return app


async def serve(settings: Settings, pool: Any, report: Callable[[], tuple[bool, dict[str, str]]],
                stop: asyncio.Event) -> None:
    """Serve the admin API on ``admin.host:admin.port`` until ``stop`` (a port in use raises ConfigError).  Replays
    run one at a time, with a schema reader and a writer of their own (:meth:`Replayer.open`: apply's batches are
    not disturbed)."""
    import uvicorn

    from cdcpipe.apply.replay import Replayer

    cfg = settings.admin
    fixed = [(WRITE, cfg.token.get_secret_value())] if cfg.token is not None else []
    fixed += [(READ, cfg.read_token.get_secret_value())] if cfg.read_token is not None else []
    tokens = Tokens(fixed, cfg.tokens_file, max_failures=cfg.max_auth_failures)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve the admin API on {cfg.host}:{cfg.port}: {exc.strerror}; choose another "
                          f"with admin.port ({env_name('admin.port')})") from None
    replayer = await Replayer.open(settings, pool)
    server = _server(uvicorn.Config(build(pool, tokens, replayer.replay, report), log_config=None, access_log=False,
                                    lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="admin-http")
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await serving
        sock.close()
        await replayer.close()


def _server(config: Any) -> Any:
    """A uvicorn server that leaves SIGTERM/SIGINT to apply (its stop event); uvicorn is imported only here."""
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:
            return contextlib.nullcontext()

    return Server(config)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of :func:`build`'s app (no server needed)."""
    async def never(*_: Any) -> Outcome:
        return Outcome(0, FAILED, None, "not served")

    doc: dict[str, Any] = build(None, Tokens([]), never, lambda: (True, {})).openapi()
    return doc


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
