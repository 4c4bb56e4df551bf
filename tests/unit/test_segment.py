"""Segment framing: headers, sync sections, entries, compression, encryption, positions, damage."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcpipe.capture.segment import (
    Entry,
    Position,
    SegmentReader,
    StaticKeyProvider,
    parse_descriptor,
)
from cdcpipe.errors import EncryptionKeyError, SegmentError, SegmentHeaderError

KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")

# (file, descriptor version, header length, sections, entries) from the test data README
CROSS_CHECK = [
    ("3.0.13-encrypted/CommitLog-6-1699284515156.log", 6, 20, [(20, 335871), (335871, 335879)], 1480),
    ("3.0.13-encrypted/CommitLog-6-1699284515157.log", 6, 20, [(20, 28)], 0),
    ("4.0.11-encrypted/CommitLog-7-1699285478684.log", 7, 20, [(20, 467), (467, 1576), (1576, 75003),
                                                                (75003, 75011)], 358),
    ("3.4-encrypted/CommitLog-6-1480001790338.log", 6, 125, [(125, 1452345), (1452345, 1452357)], 14562),
    ("3.4-encrypted/CommitLog-6-1480001790339.log", 6, 125, [(125, 137)], 0),
]
NEXTS_3029 = [13985, 14081, 19410, 19506, 21825, 22526, 26527, 29796, 31409, 34627, 39024, 40987, 44105, 66389,
              66716]


def entries_of(reader: SegmentReader, **kw: int | None) -> list[Entry]:
    items = list(reader.read(**kw))  # type: ignore[arg-type]
    assert all(isinstance(i, Entry) for i in items), [i for i in items if not isinstance(i, Entry)]
    return [i for i in items if isinstance(i, Entry)]


@pytest.mark.parametrize(("name", "version", "header", "spans", "count"), CROSS_CHECK)
def test_cross_check_sections_and_entries(testdata: Path, name: str, version: int, header: int,
                                          spans: list[tuple[int, int]], count: int) -> None:
    reader = SegmentReader(testdata / name, keys=StaticKeyProvider.from_hex(KEY.hex()))
    entries = entries_of(reader)
    assert reader.descriptor.version == version
    assert reader.descriptor.header_length == header
    assert reader.stats.section_spans == spans
    assert len(entries) == count == reader.stats.entries
    assert reader.stats.errors == 0


def test_3029_sections(testdata: Path) -> None:
    reader = SegmentReader(testdata / "3.0.29-encrypted/CommitLog-6-1699279786262.log")
    assert len(entries_of(reader)) == 176
    starts = [20, *NEXTS_3029[:-1]]
    assert reader.stats.section_spans == list(zip(starts, NEXTS_3029, strict=True))


@pytest.mark.parametrize(("sub", "header", "sections", "entries", "size"), [
    ("2.2-lz4/CommitLog-5-1438186885380.log", 83, 464, 6134, 839051),
    ("2.2-lz4/CommitLog-5-1438186885381.log", 83, 1, 0, 100),
    ("2.2-snappy/CommitLog-5-1438186915514.log", 86, 468, 6133, 820332),
    ("2.2-snappy/CommitLog-5-1438186915515.log", 86, 1, 0, 99),
])
def test_pre30_compressed_framing(testdata: Path, sub: str, header: int, sections: int, entries: int,
                                  size: int) -> None:
    reader = SegmentReader(testdata / "pre-3.0-framing-only" / sub)
    got = entries_of(reader)
    assert reader.descriptor.version == 5 and reader.descriptor.messaging_version is None
    assert reader.descriptor.compression in ("LZ4Compressor", "SnappyCompressor")
    assert reader.descriptor.header_length == header
    assert reader.stats.sections == sections and len(got) == entries
    assert reader.stats.section_spans[-1][1] == size  # last section ends exactly at EOF


def test_encrypted_header(testdata: Path) -> None:
    d = SegmentReader(testdata / "3.4-encrypted/CommitLog-6-1480001790338.log", keys=StaticKeyProvider(
        {"testing:1": KEY})).descriptor
    assert d.encrypted and d.cipher == "AES/CBC/PKCS5Padding" and d.key_alias == "testing:1"
    assert d.iv == bytes.fromhex("4927e54951a0c100d93d9de98da8ccd9")
    assert d.messaging_version == 10


def test_keystore(testdata: Path) -> None:
    store = testdata / "test-conf/cassandra.keystore"
    keys = StaticKeyProvider.from_keystore(store, "cassandra")
    assert keys.key_for("testing:1") == KEY
    assert keys.key_for("testing:2").hex() == "5b580ef7c05053e49aa4244736ae5744"
    only = StaticKeyProvider.from_keystore(store, "cassandra", "cassandra", alias="testing:1")
    assert only.key_for("anything") == KEY
    reader = SegmentReader(testdata / "3.4-encrypted/CommitLog-6-1480001790339.log", keys=keys)
    assert entries_of(reader) == []
    with pytest.raises(EncryptionKeyError):
        StaticKeyProvider.from_keystore(store, "wrong")
    with pytest.raises(EncryptionKeyError):
        StaticKeyProvider.from_keystore(store, "cassandra", alias="nope")


def test_encrypted_without_key(testdata: Path) -> None:
    with pytest.raises(EncryptionKeyError):
        SegmentReader(testdata / "3.4-encrypted/CommitLog-6-1480001790338.log")
    with pytest.raises(EncryptionKeyError):
        SegmentReader(testdata / "3.4-encrypted/CommitLog-6-1480001790338.log", keys=StaticKeyProvider({"x": KEY}))


def test_header_errors(testdata: Path) -> None:
    data = (testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log").read_bytes()
    bad = bytearray(data)
    bad[5] ^= 1
    with pytest.raises(SegmentHeaderError, match="CRC"):
        parse_descriptor(bytes(bad), "x")
    with pytest.raises(SegmentHeaderError) as info:
        parse_descriptor(data[:10], "x")
    assert info.value.retriable
    with pytest.raises(SegmentHeaderError, match="version"):
        parse_descriptor(struct.pack(">i", 9) + data[4:], "x")
    with pytest.raises(SegmentHeaderError, match="file name"):
        SegmentReader("/x/CommitLog-7-5.log", data=data)
    with pytest.raises(SegmentHeaderError):
        SegmentReader("/nonexistent/CommitLog-7-1.log")


@pytest.mark.parametrize("name", ["4.0.11-encrypted/CommitLog-7-1699285478684.log",
                                  "3.4-encrypted/CommitLog-6-1480001790338.log",
                                  "pre-3.0-framing-only/2.2-lz4/CommitLog-5-1438186885380.log"])
def test_resume_and_limit(testdata: Path, name: str) -> None:
    reader = SegmentReader(testdata / name, keys=StaticKeyProvider.from_hex(KEY.hex()))
    entries = entries_of(reader)
    seg = reader.descriptor.segment_id
    assert all(e.position.segment_id == seg for e in entries)
    assert all(a.position.offset <= b.start for a, b in itertools.pairwise(entries))
    for k in (0, 1, len(entries) // 2, len(entries) - 2):
        # resuming from an entry's position continues with the next entry
        assert entries_of(reader, start=entries[k].position.offset) == entries[k + 1:]
        # starting at an entry's own start includes it
        assert entries_of(reader, start=entries[k].start)[0] == entries[k]
        # the CDC index offset limits what is read
        assert entries_of(reader, limit=entries[k].position.offset) == entries[:k + 1]
    assert entries_of(reader, start=entries[-1].position.offset) == []


def test_position_text() -> None:
    p = Position.parse("1699285478684:1776")
    assert p == Position(1699285478684, 1776) and str(p) == "1699285478684:1776"
    assert Position(1, 5) < Position(1, 6) < Position(2, 0)


def _sections(reader: SegmentReader, entries: list[Entry]) -> list[list[bytes]]:
    return [[e.data for e in entries if m + 8 <= e.start < n] for m, n in reader.stats.section_spans]


@pytest.mark.parametrize("compressor", ["LZ4Compressor", "SnappyCompressor", "DeflateCompressor",
                                        "ZstdCompressor", "org.apache.cassandra.io.compress.ZstdCompressor"])
def test_compressed_framing(testdata: Path, segment_builder: Callable[..., bytes], compressor: str) -> None:
    plain = SegmentReader(testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log")
    entries = entries_of(plain)
    sections = _sections(plain, entries)
    data = segment_builder(sections, segment_id=42, compressor=compressor)
    reader = SegmentReader("CommitLog-7-42.log", data=data)
    got = entries_of(reader)
    assert [e.data for e in got] == [e.data for e in entries]
    assert reader.stats.sections == len(sections)
    # logical positions: the plain layout shifted by the header length difference
    shift = reader.descriptor.header_length - plain.descriptor.header_length
    assert [e.position.offset - shift for e in got] == [e.position.offset for e in entries]
    assert entries_of(reader, start=got[100].position.offset) == got[101:]


def test_encrypted_round_trip(testdata: Path, segment_builder: Callable[..., bytes]) -> None:
    plain = SegmentReader(testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log")
    entries = entries_of(plain)
    data = segment_builder(_sections(plain, entries), segment_id=43, key=KEY, chunk=4096)
    reader = SegmentReader("CommitLog-7-43.log", data=data, keys=StaticKeyProvider({"testing:1": KEY}))
    assert [e.data for e in entries_of(reader)] == [e.data for e in entries]


def test_bad_entry_crc_is_skipped(testdata: Path) -> None:
    path = testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"
    entries = entries_of(SegmentReader(path))
    bad = bytearray(path.read_bytes())
    victim = entries[10]
    bad[victim.start + 20] ^= 0x40
    items = list(SegmentReader(path, data=bytes(bad)).read())
    errors = [i for i in items if isinstance(i, SegmentError)]
    assert len(errors) == 1 and "data CRC" in errors[0].reason and errors[0].path == str(path)
    assert [i for i in items if isinstance(i, Entry)] == entries[:10] + entries[11:]


def test_bad_marker_resyncs_to_next_section(testdata: Path) -> None:
    path = testdata / "3.0.29-encrypted/CommitLog-6-1699279786262.log"
    reader = SegmentReader(path)
    entries = entries_of(reader)
    spans = reader.stats.section_spans
    bad = bytearray(path.read_bytes())
    marker, nxt = spans[3]
    bad[marker + 5] ^= 0xFF  # marker CRC
    damaged = SegmentReader(path, data=bytes(bad))
    items = list(damaged.read())
    errors = [i for i in items if isinstance(i, SegmentError)]
    assert [(e.offset, e.reason) for e in errors] == [(marker, "bad sync marker CRC")]
    assert damaged.stats.errors == 1
    expected = [e for e in entries if not marker < e.start < nxt]
    assert [i for i in items if isinstance(i, Entry)] == expected


def test_bad_size_crc_skips_rest_of_section(testdata: Path) -> None:
    path = testdata / "3.0.29-encrypted/CommitLog-6-1699279786262.log"
    reader = SegmentReader(path)
    entries = entries_of(reader)
    marker, nxt = max(reader.stats.section_spans, key=lambda s: s[1] - s[0])
    inside = [e for e in entries if marker < e.start < nxt]
    assert len(inside) > 5
    bad = bytearray(path.read_bytes())
    bad[inside[3].start + 6] ^= 1
    items = list(SegmentReader(path, data=bytes(bad)).read())
    errors = [i for i in items if isinstance(i, SegmentError)]
    assert [i.offset for i in errors] == [marker] and "size CRC" in errors[0].reason
    assert [i for i in items if isinstance(i, Entry)] == [e for e in entries if e not in inside[3:]]


def test_truncated_plain_segment(testdata: Path) -> None:
    path = testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log"
    entries = entries_of(SegmentReader(path))
    data = path.read_bytes()[:entries[200].start + 30]
    items = list(SegmentReader(path, data=data).read())
    got = [i for i in items if isinstance(i, Entry)]
    assert got == entries[:len(got)] and len(got) < 200
    errors = [i for i in items if isinstance(i, SegmentError)]
    assert len(errors) == 1 and errors[0].offset == 1576 and "next offset" in errors[0].reason


def test_damaged_compressed_section_ends_segment(testdata: Path, segment_builder: Callable[..., bytes]) -> None:
    plain = SegmentReader(testdata / "4.0.11-encrypted/CommitLog-7-1699285478684.log")
    entries = entries_of(plain)
    sections = _sections(plain, entries)
    data = bytearray(segment_builder(sections, segment_id=44, compressor="DeflateCompressor"))
    reader = SegmentReader("CommitLog-7-44.log", data=bytes(data))
    entries_of(reader)
    second = reader.stats.section_spans[1][0]
    data[second + 20] ^= 0xFF
    items = list(SegmentReader("CommitLog-7-44.log", data=bytes(data)).read())
    errors = [i for i in items if isinstance(i, SegmentError)]
    assert len(errors) == 1 and errors[0].offset == second
    assert [i.data for i in items if isinstance(i, Entry)] == sections[0]


def test_unsupported_compressor(segment_builder: Callable[..., bytes]) -> None:
    data = segment_builder([[b"x" * 20]], segment_id=45, compressor="DeflateCompressor")
    data = data.replace(b"DeflateCompressor", b"DeflateCompresso?")
    with pytest.raises(SegmentHeaderError):  # CRC no longer matches the edited parameters
        SegmentReader("CommitLog-7-45.log", data=data)
