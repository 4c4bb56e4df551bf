"""The ``_cdc_meta`` JSON form of merge states, as stored in PostgreSQL.

Row meta (``_cdc_meta`` of a mirrored row or of its shadow row)::

    {"m": [ts, ttl, ldt|null],                       row marker (absent: none)
     "d": [ts, ldt],                                 row deletion (absent: none)
     "c": {column: [ts, ttl, ldt|null, tombstone, value hex]},
     "x": {column: {"d": [ts, ldt] | null, "e": [[path hex, ts, ttl, ldt|null, tombstone, value hex], ...]}}}

Partition meta (``<table>$partition``)::

    {"d": [ts, ldt], "r": [[[start hex...], incl, [end hex...], incl, ts, ldt], ...], "s": row meta of the static row}

``ldt`` is the expiry of an expiring cell/marker and the deletion time of a tombstone; all integers are exact
(PostgreSQL keeps JSON numbers as ``numeric``).  :func:`decode_row` inverts :func:`encode_row` exactly.
"""

from __future__ import annotations

import json
from typing import Any

from cdcpipe.apply.merge import ComplexState, PartitionState, RangeTombstone, RowState, Version
from cdcpipe.model import Deletion


def _v(v: Version) -> list[Any]:
    return [v.ts, v.ttl, v.ldt, 1 if v.tombstone else 0, v.value.hex()]


def _unv(x: list[Any]) -> Version:
    return Version(x[0], x[2], x[1], bool(x[3]), bytes.fromhex(x[4]))


def _d(d: Deletion) -> list[int]:
    return [d.timestamp, d.local_deletion_time]


def _und(x: list[int] | None) -> Deletion | None:
    return None if x is None else Deletion(x[0], x[1])


def row_data(row: RowState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if row.marker is not None:
        out["m"] = [row.marker.ts, row.marker.ttl, row.marker.ldt]
    if row.deletion is not None:
        out["d"] = _d(row.deletion)
    if row.cells:
        out["c"] = {k: _v(v) for k, v in row.cells.items()}
    if row.complex:
        out["x"] = {k: {"d": None if c.deletion is None else _d(c.deletion),
                        "e": [[p.hex(), *_v(v)] for p, v in sorted(c.elements.items())]}
                    for k, c in row.complex.items()}
    return out


def row_from_data(data: dict[str, Any]) -> RowState:
    m = data.get("m")
    marker = None if m is None else Version(m[0], m[2], m[1])
    cells = {k: _unv(v) for k, v in data.get("c", {}).items()}
    complex_ = {k: ComplexState(_und(c["d"]), {bytes.fromhex(e[0]): _unv(e[1:]) for e in c["e"]})
                for k, c in data.get("x", {}).items()}
    return RowState(marker, _und(data.get("d")), cells, complex_)


_NAMES: dict[str, str] = {}


def _name(key: str) -> str:
    """A column name as a JSON string (cached: column names repeat on every row)."""
    found = _NAMES.get(key)
    if found is None:
        if len(_NAMES) > 100_000:
            _NAMES.clear()
        found = _NAMES[key] = json.dumps(key)
    return found


def _ldt(ldt: int | None) -> str:
    return "null" if ldt is None else str(ldt)


def encode_row(row: RowState) -> str:
    """The same text as ``json.dumps(row_data(row), separators=(",", ":"))``, built directly (hot path)."""
    out = []
    m = row.marker
    if m is not None:
        out.append(f'"m":[{m.ts},{m.ttl},{_ldt(m.ldt)}]')
    d = row.deletion
    if d is not None:
        out.append(f'"d":[{d.timestamp},{d.local_deletion_time}]')
    if row.cells:
        cells = []
        for k, v in row.cells.items():
            name = _NAMES.get(k) or _name(k)
            if v.ldt is None and not v.tombstone:  # a plain live cell
                cells.append(f'{name}:[{v.ts},{v.ttl},null,0,"{v.value.hex()}"]')
            else:
                cells.append(f'{name}:[{v.ts},{v.ttl},{_ldt(v.ldt)},{1 if v.tombstone else 0},"{v.value.hex()}"]')
        out.append('"c":{' + ",".join(cells) + "}")
    if row.complex:
        x = json.dumps({k: {"d": None if c.deletion is None else _d(c.deletion),
                            "e": [[p.hex(), *_v(v)] for p, v in sorted(c.elements.items())]}
                        for k, c in row.complex.items()}, separators=(",", ":"))
        out.append('"x":' + x)
    return "{" + ",".join(out) + "}"


def decode_row(text: str) -> RowState:
    return row_from_data(json.loads(text))


def encode_partition(part: PartitionState) -> str:
    data: dict[str, Any] = {}
    if part.deletion is not None:
        data["d"] = _d(part.deletion)
    if part.ranges:
        data["r"] = [[[b.hex() for b in r.start], r.start_inclusive, [b.hex() for b in r.end], r.end_inclusive,
                      *_d(r.deletion)] for r in part.ranges]
    static = row_data(part.static)
    if static:
        data["s"] = static
    return json.dumps(data, separators=(",", ":"))


def decode_partition(text: str) -> PartitionState:
    data = json.loads(text)
    ranges = tuple(
        RangeTombstone(tuple(bytes.fromhex(b) for b in r[0]), bool(r[1]), tuple(bytes.fromhex(b) for b in r[2]),
                       bool(r[3]), Deletion(r[4], r[5]))
        for r in data.get("r", []))
    return PartitionState(_und(data.get("d")), ranges, row_from_data(data.get("s", {})))
