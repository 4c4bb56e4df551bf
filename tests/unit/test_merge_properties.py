"""Property tests: the merged state does not depend on event order, duplicates or batch boundaries, and its
``SELECT *`` agrees with a naive reference model of the reference's rules (§9)."""

from __future__ import annotations

from functools import reduce
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdcpipe.apply import merge
from cdcpipe.model import Cell, ChangeEvent, Op
from cdcpipe.typemap import serialize
from tests.support.mergekit import (
    NOW,
    TABLES,
    delete_columns,
    delete_partition,
    delete_range,
    delete_row,
    elements,
    insert,
    select,
    update,
)

T = TABLES["p"]
keys = st.tuples(st.integers(0, 1), st.integers(0, 2), st.integers(0, 1))
ts_ = st.integers(1, 6)
ttl_ = st.sampled_from([0, 0, 4])
wrote_at = st.sampled_from([NOW, NOW + 3])
v_ = st.one_of(st.none(), st.sampled_from([-1, 0, 1, 2]))
w_ = st.one_of(st.none(), st.sampled_from(["a", "B", ""]))
m_ = st.one_of(st.none(), st.dictionaries(st.integers(0, 2), st.sampled_from([-1, 1, 3]), max_size=2))


def _cols(draw: Any) -> dict[str, Any]:
    out = {}
    for name, strat in (("v", v_), ("w", w_), ("m", m_), ("s", v_)):
        if draw(st.booleans()):
            out[name] = draw(strat)
    return out


@st.composite
def event(draw: Any) -> ChangeEvent:
    kind = draw(st.sampled_from(["insert", "update", "update", "elements", "delcol", "row", "partition", "range"]))
    key, ts, ttl, now = draw(keys), draw(ts_), draw(ttl_), draw(wrote_at)
    if kind == "insert":
        return insert("p", key, ts, ttl, now, **_cols(draw))
    if kind == "update":
        cols = _cols(draw) or {"v": draw(v_)}
        return update("p", key, ts, ttl, now, **cols)
    if kind == "elements":
        cells = tuple(Cell(None, ts, deleted=True, local_deletion_time=now, path=k) if v is None
                      else Cell(v, ts, ttl, now + ttl if ttl else None, path=k)
                      for k, v in draw(st.dictionaries(st.integers(0, 2), st.none() | st.integers(-1, 3),
                                                       min_size=1, max_size=2)).items())
        return elements("p", key, ts, "m", cells)
    if kind == "delcol":
        names = draw(st.lists(st.sampled_from(["v", "w", "m", "s"]), min_size=1, max_size=2, unique=True))
        return delete_columns("p", key, ts, *names, now=now)
    if kind == "row":
        return delete_row("p", key, ts, now)
    if kind == "partition":
        return delete_partition("p", key[:1], ts, now)
    start = tuple(draw(st.lists(st.integers(0, 2), max_size=2)))
    end = tuple(draw(st.lists(st.integers(0, 2), max_size=2)))
    return delete_range("p", key[:1], start, draw(st.booleans()), end, draw(st.booleans()), ts, now)


events = st.lists(event(), min_size=1, max_size=14)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(events, st.randoms(use_true_random=False), st.data())
def test_order_duplicates_and_batches_do_not_matter(evs: list[ChangeEvent], rnd: Any, data: Any) -> None:
    once = merge.collapse(T, evs)
    shuffled = evs + [rnd.choice(evs) for _ in range(rnd.randint(0, len(evs)))]
    rnd.shuffle(shuffled)
    assert merge.collapse(T, shuffled) == once
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    chunks = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    batched = reduce(lambda acc, c: acc.join(merge.collapse(T, c)).normalized(T), chunks, merge.Changes())
    assert batched == once
    in_ts_order = sorted(evs, key=lambda e: e.timestamp_micros)
    assert merge.collapse(T, in_ts_order) == once


@SETTINGS
@given(events, st.sampled_from([NOW + 1, NOW + 5, NOW + 8]))
def test_select_agrees_with_reference_model(evs: list[ChangeEvent], now: int) -> None:
    assert select("p", evs, now=now) == reference_select(evs, now)


# ------------------------------------------------------------------------------- a naive model of §9

def _order(v: dict[str, Any]) -> tuple[Any, ...]:
    return (v["ts"], v["ldt"] is not None, v["tomb"], v["ldt"] or 0, v["bytes"])


def _covers(rt: ChangeEvent, c: tuple[int, int]) -> bool:
    assert rt.range_start is not None and rt.range_end is not None
    s, e = rt.range_start, rt.range_end
    if s.values:
        p = c[:len(s.values)]
        if p < s.values or (p == s.values and not s.inclusive):
            return False
    if e.values:
        p = c[:len(e.values)]
        if p > e.values or (p == e.values and not e.inclusive):
            return False
    return True


def reference_select(evs: list[ChangeEvent], now: int) -> list[dict[str, Any]]:
    types = {c.name: c.type for c in (*T.regular, *T.static)}
    versions: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    markers: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in evs:
        for col in e.columns:
            if col.complex_deletion is not None:
                versions.setdefault((e.primary_key, "cdel", col.name), []).append(
                    {"ts": col.complex_deletion.timestamp})
            for cell in col.cells:
                t = types[col.name].params[1] if col.name == "m" else types[col.name]
                ident = (e.partition_key if col.static else e.primary_key, col.name, cell.path)
                versions.setdefault(ident, []).append({
                    "ts": cell.timestamp, "tomb": cell.deleted,
                    "ldt": cell.local_deletion_time if cell.deleted else cell.expires_at,
                    "bytes": b"" if cell.deleted else serialize(t, cell.value), "value": cell.value})
        if e.liveness is not None and not e.static:
            markers.setdefault(e.primary_key, []).append(
                {"ts": e.liveness.timestamp, "tomb": False, "ldt": e.liveness.expires_at, "bytes": b""})
    pdel = [e for e in evs if e.op is Op.PARTITION_DELETE]
    rts = [e for e in evs if e.op is Op.RANGE_DELETE]
    rdel = [e for e in evs if e.deletion is not None and e.op in (Op.ROW_DELETE, Op.UPSERT)]

    def partition_d(k: int) -> int:
        found = [e.deletion.timestamp for e in pdel if e.partition_key == (k,) and e.deletion]
        return max(found or [merge.NO_DELETION])

    def row_d(pk: tuple[int, int, int]) -> int:
        d = partition_d(pk[0])
        d = max([d] + [e.deletion.timestamp for e in rts if e.partition_key == pk[:1] and _covers(e, pk[1:])
                       and e.deletion])
        return max([d] + [e.deletion.timestamp for e in rdel if e.primary_key == pk and e.deletion])

    def winner(vs: list[dict[str, Any]], d: int) -> dict[str, Any] | None:
        best = max(vs, key=_order)
        live = best["ts"] > d and not best["tomb"] and (best["ldt"] is None or now < best["ldt"])
        return best if live else None

    rows = []
    for pk in sorted({e.primary_key for e in evs if len(e.primary_key) == 3}):
        d = row_d(pk)
        row: dict[str, Any] = {"k": pk[0], "c1": pk[1], "c2": pk[2]}
        live = bool(pk in markers and winner(markers[pk], d))
        for name in ("v", "w"):
            best = winner(versions[(pk, name, None)], d) if (pk, name, None) in versions else None
            row[name] = None if best is None else best["value"]
            live = live or best is not None
        dm = max([d] + [v["ts"] for v in versions.get((pk, "cdel", "m"), [])])
        m = []
        for path in range(3):
            best = winner(versions[(pk, "m", path)], dm) if (pk, "m", path) in versions else None
            if best is not None:
                m.append((path, best["value"]))
        row["m"] = m or None
        live = live or bool(m)
        sk = ((pk[0],), "s", None)
        best = winner(versions[sk], partition_d(pk[0])) if sk in versions else None
        row["s"] = None if best is None else best["value"]
        if live:
            rows.append(row)
    return rows
