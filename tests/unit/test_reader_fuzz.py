"""Fuzzing the reader with damaged real segments: bit flips, truncation and garbage.

Invariants: only the reader's own error types escape; every yielded entry is byte-identical to an
entry of the undamaged segment (nothing garbage is yielded); decoding a yielded entry raises at most
MutationDecodeError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdcpipe.capture.mutation import MutationDecoder
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.segment import Entry, SegmentReader, StaticKeyProvider
from cdcpipe.errors import MutationDecodeError, SegmentError
from cdcpipe.schema_source import parse_cql_schema

KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")
CFID = "657e5210-7cbb-11ee-9858-c9aa1eb53e69"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    database=None)


@pytest.fixture(scope="module")
def samples(testdata: Path, segment_builder: Callable[..., bytes]) -> dict[str, tuple[str, bytes, set[bytes]]]:
    """name -> (file name, bytes, data of its entries). Plain samples are cut after their end marker."""
    path = testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"
    plain = SegmentReader(path)
    entries = [e for e in plain.read() if isinstance(e, Entry)]
    sections = [[e.data for e in entries if m + 8 <= e.start < n] for m, n in plain.stats.section_spans]
    small = [sections[0], sections[1], sections[2][:40], []]
    out = {"plain": (path.name, path.read_bytes()[:75011 + 8], {e.data for e in entries})}
    p3029 = testdata / "3.0.29-encrypted/CommitLog-6-1699279786262.log"
    r3029 = SegmentReader(p3029)
    out["plain-3.0.29"] = (p3029.name, p3029.read_bytes()[:66716 + 16],
                           {e.data for e in r3029.read() if isinstance(e, Entry)})
    datas = {d for s in small for d in s}
    for comp in ("LZ4Compressor", "DeflateCompressor", "ZstdCompressor", "SnappyCompressor"):
        out[comp] = ("CommitLog-7-7.log", segment_builder(small, segment_id=7, compressor=comp), datas)
    out["encrypted"] = ("CommitLog-7-7.log", segment_builder(small, segment_id=7, key=KEY, chunk=2048), datas)
    return out


def check(name: str, data: bytes, known: set[bytes]) -> None:
    decoder = MutationDecoder(SchemaRegistry(tables=parse_cql_schema(
        f'CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, '
        f"PRIMARY KEY (key, col)) WITH id = {CFID};")))
    try:
        reader = SegmentReader(name, data=data, keys=StaticKeyProvider({"testing:1": KEY}))
        last = -1
        for item in reader.read():
            if isinstance(item, SegmentError):
                assert item.path == name and 0 <= item.offset <= len(data)
                continue
            assert item.data in known, "garbage entry yielded"
            assert last <= item.start < item.position.offset
            last = item.position.offset
            with contextlib.suppress(MutationDecodeError):
                decoder.decode(item.data, 12, item.position, name)
    except SegmentError:
        pass


SAMPLE_NAMES = ["plain", "plain-3.0.29", "LZ4Compressor", "DeflateCompressor", "ZstdCompressor",
                "SnappyCompressor", "encrypted"]


@SETTINGS
@given(name=st.sampled_from(SAMPLE_NAMES), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                   st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flips(samples: dict[str, tuple[str, bytes, set[bytes]]], name: str,
                   flips: list[tuple[float, int]]) -> None:
    fname, data, known = samples[name]
    buf = bytearray(data)
    for where, bit in flips:
        buf[int(where * len(buf))] ^= 1 << bit
    check(fname, bytes(buf), known)


@SETTINGS
@given(name=st.sampled_from(SAMPLE_NAMES), cut=st.floats(0, 1))
def test_truncation(samples: dict[str, tuple[str, bytes, set[bytes]]], name: str, cut: float) -> None:
    fname, data, known = samples[name]
    check(fname, data[:int(cut * len(data))], known)


@SETTINGS
@given(name=st.sampled_from(SAMPLE_NAMES), where=st.floats(0, 1), garbage=st.binary(min_size=1, max_size=64),
       replace=st.booleans())
def test_garbage(samples: dict[str, tuple[str, bytes, set[bytes]]], name: str, where: float, garbage: bytes,
                 replace: bool) -> None:
    fname, data, known = samples[name]
    at = int(where * len(data))
    end = at + len(garbage) if replace else at
    check(fname, data[:at] + garbage + data[end:], known)


def test_samples_are_clean(samples: dict[str, tuple[str, bytes, set[bytes]]]) -> None:
    for fname, data, known in samples.values():
        reader = SegmentReader(fname, data=data, keys=StaticKeyProvider({"testing:1": KEY}))
        items = list(reader.read())
        assert all(isinstance(i, Entry) for i in items)
        assert {i.data for i in items if isinstance(i, Entry)} == known
