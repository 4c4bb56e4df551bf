"""Fuzzing the reader with damaged real segments: bit flips, truncation and garbage.

Invariants: only the reader's own error types escape; every yielded entry is byte-identical to an
entry of the undamaged segment (nothing garbage is yielded); decoding a yielded entry raises at most
MutationDecodeError.

Followed in a cdc_raw (``SegmentFollower``, COMPLETED at the undamaged durable offset), a damaged segment is never
lost: whenever not every entry was read, damage was reported and the segment is marked, then *moved* to the
quarantine (never deleted) once the position past it is committed; each damaged entry's dead-letter record carries
its bytes; nothing escapes the follower.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdcpipe.capture.cdc_index import SegmentFollower, damage_record
from cdcpipe.capture.mutation import MutationDecoder
from cdcpipe.capture.quarantine import Quarantine
from cdcpipe.capture.registry import SchemaRegistry
from cdcpipe.capture.segment import Entry, SegmentReader, StaticKeyProvider
from cdcpipe.capture.segment_gc import SegmentCollector
from cdcpipe.errors import DamagedEntryError, MutationDecodeError, SegmentError
from cdcpipe.schema_source import parse_cql_schema

KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")
CFID = "657e5210-7cbb-11ee-9858-c9aa1eb53e69"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    database=None)
FOLLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
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


Followed = dict[str, tuple[str, bytes, list[bytes], int]]


@pytest.fixture(scope="module")
def followed(samples: dict[str, tuple[str, bytes, set[bytes]]]) -> Followed:
    """name -> (file name, bytes, its entries in order, its durable offset: where its last entry ends)."""
    out = {}
    for name, (fname, data, _) in samples.items():
        entries = [e for e in SegmentReader(fname, data=data, keys=StaticKeyProvider({"testing:1": KEY})).read()
                   if isinstance(e, Entry)]
        out[name] = (fname, data, [e.data for e in entries], entries[-1].position.offset)
    return out


def follow(fname: str, data: bytes, clean: list[bytes], durable: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "cdc_raw"
        raw.mkdir()
        (raw / fname).write_bytes(data)
        (raw / fname.replace(".log", "_cdc.idx")).write_text(f"{durable}\nCOMPLETED")
        q = Quarantine.open(None, raw)
        follower = SegmentFollower(raw, None, StaticKeyProvider({"testing:1": KEY}), q, stall_timeout_s=0)
        got: list[bytes] = []
        errors: list[SegmentError] = []
        for _ in range(100):
            chunk = follower.poll(100_000)
            got += [i.entry.data for i in chunk.items if i.entry is not None]
            errors += [i.error for i in chunk.items if i.error is not None]
            if chunk.end is not None:
                break
        assert chunk.end is not None, "a COMPLETED segment was never passed"
        assert not Counter(got) - Counter(clean), "garbage entry yielded"
        if Counter(got) != Counter(clean):
            assert errors, "entries missing without a damage report"
        assert q.is_marked(fname) == bool(errors)
        for err in errors:
            record = json.loads(damage_record("p", str(raw / fname), err).value)
            if isinstance(err, DamagedEntryError):
                assert bytes.fromhex(record["entry_hex"]) == err.data
        assert follower.position is not None
        SegmentCollector(raw, 1 << 30, q).collect(follower.position)
        assert not (raw / fname).exists()  # out of cdc_raw either way ...
        assert (q.directory / fname).exists() == bool(errors)  # ... but kept whenever something was not read


def test_followed_samples_are_clean(followed: Followed) -> None:
    for fname, data, clean, durable in followed.values():
        follow(fname, data, clean, durable)


@FOLLOW
@given(name=st.sampled_from(SAMPLE_NAMES), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                   st.integers(0, 7)), min_size=1, max_size=8))
def test_followed_bit_flips_are_quarantined_never_lost(followed: Followed, name: str,
                                                       flips: list[tuple[float, int]]) -> None:
    fname, data, clean, durable = followed[name]
    buf = bytearray(data)
    for where, bit in flips:
        buf[int(where * len(buf))] ^= 1 << bit
    follow(fname, bytes(buf), clean, durable)


@FOLLOW
@given(name=st.sampled_from(SAMPLE_NAMES), cut=st.floats(0, 1, exclude_max=True))
def test_followed_truncation_is_quarantined_never_lost(followed: Followed, name: str, cut: float) -> None:
    fname, data, clean, durable = followed[name]
    follow(fname, data[:int(cut * len(data))], clean, durable)


@FOLLOW
@given(name=st.sampled_from(SAMPLE_NAMES), where=st.floats(0, 1), size=st.integers(1, 4096))
def test_followed_zero_filled_areas_are_quarantined_never_lost(followed: Followed, name: str, where: float,
                                                               size: int) -> None:
    fname, data, clean, durable = followed[name]
    at = int(where * len(data))
    follow(fname, data[:at] + bytes(min(size, len(data) - at)) + data[at + size:], clean, durable)


def test_followed_without_the_key_an_encrypted_segment_is_quarantined(followed: Followed) -> None:
    fname, data, _, durable = followed["encrypted"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "cdc_raw"
        raw.mkdir()
        (raw / fname).write_bytes(data)
        (raw / fname.replace(".log", "_cdc.idx")).write_text(f"{durable}\nCOMPLETED")
        q = Quarantine.open(None, raw)
        follower = SegmentFollower(raw, None, None, q)
        chunk = follower.poll(1000)
        assert [type(i.error).__name__ for i in chunk.items] == ["EncryptionKeyError"] and chunk.end is not None
        assert follower.position is not None
        SegmentCollector(raw, 1 << 30, q).collect(follower.position)
        assert (q.directory / fname).exists() and not (raw / fname).exists()
