"""Rows whose values stay serialized, and readers of serialized CQL values (protocol v3+ collections, UDTs).

A session with ``client_protocol_handler = RawProtocolHandler`` (and ``row_factory = tuple_factory``) answers rows
of ``bytes | None`` per column: nothing is decoded by the driver, so a value it cannot decode (an out-of-range date
or timestamp) is no error, and values compare byte for byte with what the commit log holds.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cassandra.protocol import ProtocolHandler, ResultMessage, read_int


class RawRows(ResultMessage):  # type: ignore[misc]
    """A RESULT message whose rows stay serialized: a list of ``bytes | None`` per row."""

    def recv_results_rows(self, f: Any, protocol_version: int, user_type_map: Any, result_metadata: Any,
                          column_encryption_policy: Any) -> None:
        self.recv_results_metadata(f, user_type_map)
        metadata = self.column_metadata or result_metadata
        count = read_int(f)
        width = len(metadata)
        self.parsed_rows = [self.recv_row(f, width) for _ in range(count)]
        self.column_names = [c[2] for c in metadata]
        self.column_types = [c[3] for c in metadata]


class RawProtocolHandler(ProtocolHandler):  # type: ignore[misc]
    message_types_by_opcode: ClassVar[dict[int, Any]] = {
        **ProtocolHandler.message_types_by_opcode, RawRows.opcode: RawRows}


def int32(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def values(raw: bytes, start: int, count: int | None) -> list[bytes | None]:
    """``count`` int32-length-prefixed values (a negative length is null) from ``start`` to the end of ``raw``;
    ``count`` None: as many as there are."""
    p = start
    values: list[bytes | None] = []
    while (p < len(raw)) if count is None else (len(values) < count):
        size = int32(raw[p:p + 4])
        p += 4
        if size < 0:
            values.append(None)
            continue
        if p + size > len(raw):
            raise ValueError("the value ends early")
        values.append(raw[p:p + size])
        p += size
    if p != len(raw):
        raise ValueError("trailing bytes after the value")
    return values


def elements(raw: bytes, per_entry: int = 1) -> list[bytes | None]:
    """The elements of a serialized collection (protocol v3+: an int32 count of entries, then ``per_entry``
    values each: 2 for a map's key and value)."""
    return values(raw, 4, int32(raw[:4]) * per_entry)


def udt_fields(raw: bytes) -> list[bytes | None]:
    """The fields of a serialized UDT in order (None for a null field)."""
    return values(raw, 0, None)
