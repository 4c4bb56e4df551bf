"""Commit log segment framing: descriptor header, sync sections, entries.

Reads Cassandra commit log segments (descriptor versions 6, 7 and 8; version 5 framing is accepted
for tests) in plain, compressed (LZ4, Snappy, Deflate, Zstd) and encrypted (AES/CBC + LZ4) form and
yields CRC-checked entries (serialized mutations) with their positions. It does not decode mutations
(see ``cdcpipe.capture.mutation``). Byte format: ``docs/reference/cassandra-commitlog-format.md`` §4-§6.

Positions
    A ``Position`` is ``(segment_id, offset)`` where ``offset`` is a *logical* segment offset: the file
    offset for plain segments, the offset in the uncompressed/decrypted buffer for compressed and
    encrypted segments (the same unit as Cassandra's ``CommitLogPosition`` and the CDC ``_cdc.idx``).
    ``Entry.position`` is the offset just *after* the entry (Cassandra's convention). Reading with
    ``start=p`` yields exactly the entries that begin at or after ``p``, so resuming from the position
    of the last processed entry continues with the next entry and never repeats it.

Damage
    A bad sync marker, a bad entry-size CRC, a truncated section or an undecodable section is reported
    as a ``SegmentError`` value in the stream (with file and physical offset) and counted; reading
    resumes at the next valid sync section. An entry with a bad data CRC is reported (as a
    ``DamagedEntryError`` carrying its bytes) and skipped (its size is CRC-protected). With a ``limit`` (the
    durable offset of ``_cdc.idx``), data that ends before it (a zero-filled area, a truncated file) is damage.
    In compressed/encrypted segments a damaged sync marker or an undecodable
    section ends the segment, because the logical offsets of later sections cannot be recovered
    reliably. Only ``cdcpipe.errors.SegmentError`` (and subclasses) ever escape.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cdcpipe.errors import (
    DamagedEntryError,
    DataEndsEarlyError,
    EncryptionKeyError,
    SegmentError,
    SegmentHeaderError,
)

_INT = struct.Struct(">i")
_UINT = struct.Struct(">I")
_HEADER = struct.Struct(">iqH")  # version, id, params length
_MARKER = struct.Struct(">iI")  # next, crc
_ENTRY_HEAD = struct.Struct(">iI")  # size, size crc
_ENC_BLOCK = struct.Struct(">ii")  # encrypted length, plaintext length
_LE_INT = struct.Struct("<i")

MIN_DESCRIPTOR_VERSION = 5  # 2.2 framing: readable for framing tests only (legacy mutation format)
MAX_DESCRIPTOR_VERSION = 8
_MESSAGING_VERSION = {6: 10, 7: 12, 8: 13}
_FILE_NAME = re.compile(r"CommitLog-(\d+)-(\d+)\.log")
_ZEROS4 = b"\0\0\0\0"
_NONZERO = re.compile(rb"[^\x00]")
MIN_ENTRY_SIZE = 10  # CommitLogReader rejects smaller serialized mutations


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A position in the commit log: segment id and logical offset (see module docstring)."""

    segment_id: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``"<segment_id>:<offset>"``; raises ValueError."""
        seg, _, off = text.partition(":")
        return cls(int(seg), int(off))


@dataclass(frozen=True, slots=True)
class SegmentDescriptor:
    """The segment header. ``parameters`` holds the raw JSON text (its CRC was checked)."""

    version: int
    segment_id: int
    header_length: int
    parameters: str
    compression: str | None = None
    cipher: str | None = None
    key_alias: str | None = None
    iv: bytes | None = None

    @property
    def messaging_version(self) -> int | None:
        """Messaging (mutation serialization) version; None for pre-3.0 (legacy) segments."""
        return _MESSAGING_VERSION.get(self.version)

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None and self.key_alias is not None


class Entry(NamedTuple):
    """One CRC-valid commit log entry (a NamedTuple: cheap to build, see docs/adr/0003).

    ``position`` is the position just after the entry; ``start`` the logical offset of its size field.
    ``data`` is the serialized mutation (``descriptor.messaging_version`` encoding).
    """

    position: Position
    start: int
    data: bytes


# Building a frozen dataclass through its __init__ costs ~250 ns per field; the reader makes one Position
# per entry, so it sets the slots directly (same object, same invariants).
_object_new = object.__new__
_set_segment_id: Any = Position.__dict__["segment_id"].__set__
_set_offset: Any = Position.__dict__["offset"].__set__
_tuple_new: Any = tuple.__new__
_SIZE_CRCS: dict[int, int] = {}  # entry size -> CRC32 of its 4 big-endian bytes


@dataclass(slots=True)
class ReadStats:
    """Counters of one read pass (mutable, owned by the reader)."""

    sections: int = 0
    entries: int = 0
    errors: int = 0
    skipped_sections: int = 0
    section_spans: list[tuple[int, int]] = field(default_factory=list)  # (marker offset, next) in the file
    error_list: list[SegmentError] = field(default_factory=list)


class KeyProvider(Protocol):
    """Source of commit log encryption keys (Cassandra's key provider, by key alias)."""

    def key_for(self, alias: str) -> bytes:
        """Return the raw key bytes for ``alias``; raise KeyError if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class StaticKeyProvider:
    """Keys given explicitly, by alias; ``default`` (if set) serves any alias."""

    keys: Mapping[str, bytes] = field(default_factory=dict)
    default: bytes | None = None

    def key_for(self, alias: str) -> bytes:
        key = self.keys.get(alias, self.keys.get(alias.lower()))
        if key is None:
            if self.default is None:
                raise KeyError(alias)
            key = self.default
        return key

    @classmethod
    def from_hex(cls, hex_key: str) -> StaticKeyProvider:
        """A provider that uses one hex-encoded key for every alias (raises ValueError)."""
        return cls(default=bytes.fromhex(hex_key))

    @classmethod
    def from_keystore(
        cls, path: str | Path, store_password: str, key_password: str | None = None,
        alias: str | None = None,
    ) -> StaticKeyProvider:
        """Load secret keys from a JKS/JCEKS keystore (pyjks). With ``alias`` only that key is loaded
        and it also serves as default. The key password falls back to the store password, as in
        Cassandra's ``JKSKeyProvider``. Raises EncryptionKeyError."""
        import jks

        try:
            store = jks.KeyStore.load(str(path), store_password, try_decrypt_keys=False)
            keys: dict[str, bytes] = {}
            for name, entry in store.secret_keys.items():
                if alias is not None and name != alias.lower():
                    continue
                if not entry.is_decrypted():
                    entry.decrypt(key_password if key_password is not None else store_password)
                keys[name] = bytes(entry.key)
        except Exception as exc:  # pyjks raises many unrelated types
            raise EncryptionKeyError(str(path), 0, f"cannot load keystore: {exc}") from exc
        if alias is not None and not keys:
            raise EncryptionKeyError(str(path), 0, f"no secret key with alias {alias!r}")
        return cls(keys=keys, default=keys[alias.lower()] if alias is not None else None)


def _lz4_block(payload: bytes) -> bytes:
    import lz4.block

    if len(payload) < 4:
        raise ValueError("LZ4 payload shorter than its length field")
    (size,) = _LE_INT.unpack_from(payload, 0)
    if size < 0:
        raise ValueError("negative LZ4 length")
    out: bytes = lz4.block.decompress(payload[4:], uncompressed_size=size)
    if len(out) != size:
        raise ValueError("LZ4 length mismatch")
    return out


def _snappy(payload: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.decompress_raw(payload))


def _deflate(payload: bytes) -> bytes:
    return zlib.decompress(payload)


def _zstd(payload: bytes, size: int) -> bytes:
    import zstandard

    out: bytes = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(size, 1))
    return out


_DECOMPRESSORS: dict[str, Callable[[bytes, int], bytes]] = {
    "LZ4Compressor": lambda b, n: _lz4_block(b),
    "SnappyCompressor": lambda b, n: _snappy(b),
    "DeflateCompressor": lambda b, n: _deflate(b),
    "ZstdCompressor": _zstd,
    "NoopCompressor": lambda b, n: bytes(b),
}


def segment_id_of(name: str) -> int | None:
    """The segment id in a segment's file name ``CommitLog-<version>-<id>.log``; None for any other name."""
    m = _FILE_NAME.fullmatch(name)
    return int(m.group(2)) if m is not None else None


def _decompressor(name: str) -> Callable[[bytes, int], bytes] | None:
    return _DECOMPRESSORS.get(name.rsplit(".", 1)[-1])


def _crc_int(crc: int, value: int) -> int:
    return zlib.crc32((value & 0xFFFFFFFF).to_bytes(4, "big"), crc)


def parse_descriptor(data: bytes, path: str = "") -> SegmentDescriptor:
    """Parse and CRC-check the descriptor header at the start of ``data``.

    Raises SegmentHeaderError (retriable when the header is merely incomplete)."""
    if len(data) < _HEADER.size + 4:
        raise SegmentHeaderError(path, 0, "file shorter than a descriptor header", retriable=True)
    version, seg_id, plen = _HEADER.unpack_from(data, 0)
    if not MIN_DESCRIPTOR_VERSION <= version <= MAX_DESCRIPTOR_VERSION:
        raise SegmentHeaderError(path, 0, f"unsupported descriptor version {version}")
    end = _HEADER.size + plen
    if len(data) < end + 4:
        raise SegmentHeaderError(path, 0, "truncated descriptor header", retriable=True)
    params = bytes(data[_HEADER.size:end])
    crc = _crc_int(_crc_int(_crc_int(_crc_int(0, version), seg_id), seg_id >> 32), plen)
    crc = zlib.crc32(params, crc)
    if crc != _UINT.unpack_from(data, end)[0]:
        raise SegmentHeaderError(path, 0, "descriptor header CRC mismatch")
    try:
        obj = json.loads(params.decode("utf-8")) if params else {}
        if not isinstance(obj, dict):
            raise ValueError("parameters are not a JSON object")
        iv_hex = obj.get("encIV")
        iv = bytes.fromhex(iv_hex) if isinstance(iv_hex, str) else None
    except ValueError as exc:
        raise SegmentHeaderError(path, _HEADER.size, f"bad parameters JSON: {exc}") from exc

    def text(key: str) -> str | None:
        value = obj.get(key)
        return value if isinstance(value, str) else None

    return SegmentDescriptor(
        version=version, segment_id=seg_id, header_length=end + 4, parameters=params.decode("utf-8"),
        compression=text("compressionClass"), cipher=text("encCipher"), key_alias=text("encKeyAlias"), iv=iv,
    )


class _SectionFailure(Exception):
    """Internal: a section's payload cannot be recovered; the message is the reason."""


class SegmentReader:
    """Reads the entries of one segment file.

    The file is read once, when ``read`` is called (a live segment may be re-read later with
    ``start``/``limit``). Construction parses the header; it raises SegmentHeaderError if the
    header is unusable, and EncryptionKeyError if the segment is encrypted and no key is available.
    """

    def __init__(self, path: str | Path, *, keys: KeyProvider | None = None,
                 data: bytes | None = None) -> None:
        self.path = str(path)
        try:
            self._data = data if data is not None else Path(path).read_bytes()
        except OSError as exc:
            raise SegmentHeaderError(self.path, 0, f"cannot read: {exc}", retriable=True) from exc
        if type(self._data) is not bytes:  # entries are slices of it: make them bytes
            self._data = bytes(self._data)
        self.descriptor = parse_descriptor(self._data, self.path)
        named = segment_id_of(Path(self.path).name)
        if named is not None and named != self.descriptor.segment_id:
            raise SegmentHeaderError(self.path, 0, "segment id in header differs from file name")
        self.stats = ReadStats()
        self._ended = False
        self._end_at = 0  # logical offset of the zero size that ended the segment
        seg_id = self.descriptor.segment_id
        self._crc_base = _crc_int(_crc_int(0, seg_id), seg_id >> 32)
        self._key: bytes | None = None
        self._decompress: Callable[[bytes, int], bytes] | None = None
        if self.descriptor.encrypted:
            if self.descriptor.cipher != "AES/CBC/PKCS5Padding" or self.descriptor.iv is None:
                raise SegmentHeaderError(self.path, 0, f"unsupported cipher {self.descriptor.cipher!r}")
            alias = self.descriptor.key_alias or ""
            try:
                if keys is None:
                    raise KeyError(alias)
                self._key = keys.key_for(alias)
            except KeyError as exc:
                raise EncryptionKeyError(self.path, 0, f"no key for alias {alias!r}") from exc
            if len(self._key) not in (16, 24, 32):
                raise EncryptionKeyError(self.path, 0, f"key for {alias!r} is not an AES key")
        elif self.descriptor.compression is not None:
            self._decompress = _decompressor(self.descriptor.compression)
            if self._decompress is None:
                reason = f"unsupported compressor {self.descriptor.compression}"
                raise SegmentHeaderError(self.path, 0, reason)

    @property
    def plain(self) -> bool:
        return self._key is None and self._decompress is None

    def _marker_crc(self, offset: int) -> int:
        return zlib.crc32(offset.to_bytes(4, "big"), self._crc_base)

    def _error(self, offset: int, reason: str) -> SegmentError:
        return self._count(SegmentError(self.path, offset, reason))

    def _count(self, err: SegmentError) -> SegmentError:
        self.stats.errors += 1
        self.stats.error_list.append(err)
        return err

    def read(self, start: int | None = None, limit: int | None = None) -> Iterator[Entry | SegmentError]:
        """Yield the entries beginning at or after logical offset ``start`` and ending at or before
        ``limit`` (the CDC index offset), in order, interleaved with SegmentError values for damage.

        Stops at the end of data (zero marker, end of file), at ``limit``, or at a legacy
        end-of-segment entry (size 0). ``stats`` is reset when the pass starts."""
        self.stats = ReadStats()
        data = self._data
        total = len(data)
        seg_id = self.descriptor.segment_id
        start = 0 if start is None else start
        end_phys = total
        if limit is not None and self.plain:
            end_phys = min(total, limit + 8)  # room for the marker that sits at ``limit``
        phys = logical = self.descriptor.header_length
        while phys + 8 <= end_phys and (limit is None or logical < limit):
            nxt, crc = _MARKER.unpack_from(data, phys)
            min_next = phys + (8 if self.plain else 12)
            if crc != self._marker_crc(phys) or not min_next <= nxt <= total:
                if nxt == 0 and crc == 0:  # end of data: damage when the idx says more is durable
                    if limit is not None and logical < limit:
                        yield self._count(DataEndsEarlyError(
                            self.path, phys, f"zero-filled area at logical offset {logical} before the durable "
                                             f"offset {limit}", zero_filled=True))
                    return
                reason = "bad sync marker CRC" if crc != self._marker_crc(phys) else f"bad next offset {nxt}"
                yield self._error(phys, reason)
                if not self.plain:
                    return
                found = self._find_marker(phys + 1, end_phys)
                if found is None:
                    return
                phys = logical = found
                continue
            self.stats.sections += 1
            self.stats.section_spans.append((phys, nxt))
            if self.plain:
                base, logical_end = phys + 8, nxt
                if logical_end <= start:
                    self.stats.skipped_sections += 1
                    phys = logical = nxt
                    continue
                payload, lo, hi = data, base, nxt  # entries are read in place
            else:
                (plain_len,) = _INT.unpack_from(data, phys + 8)
                base, logical_end = logical + 8, logical + 8 + plain_len
                if plain_len < 0:
                    yield self._error(phys, f"negative section length {plain_len}")
                    return
                if logical_end <= start:
                    self.stats.skipped_sections += 1
                    phys, logical = nxt, logical_end
                    continue
                try:
                    payload = self._unpack_section(data[phys + 12:nxt], plain_len)
                except _SectionFailure as exc:
                    yield self._error(phys, str(exc))
                    return
                lo, hi = 0, plain_len
            self._ended = False
            yield from self._entries(payload, lo, hi, base, phys, seg_id, start, limit)
            if self._ended:  # a zero size: the legacy end of segment, or zeros where the idx says data is durable
                if limit is not None and self._end_at < limit:
                    yield self._count(DataEndsEarlyError(
                        self.path, phys, f"zero-filled area at logical offset {self._end_at} before the durable "
                                         f"offset {limit}", zero_filled=True))
                return
            phys, logical = nxt, logical_end
        if limit is not None and logical < limit:
            yield self._count(DataEndsEarlyError(
                self.path, phys, f"truncated: data ends at logical offset {logical} before the durable offset "
                                 f"{limit}", zero_filled=False))

    def _unpack_section(self, raw: bytes, plain_len: int) -> bytes:
        try:
            decode = self._decompress
            out = decode(raw, plain_len) if decode is not None else self._decrypt_section(raw)
        except _SectionFailure:
            raise
        except Exception as exc:  # decompressor libraries raise assorted types
            raise _SectionFailure(f"cannot decode section: {type(exc).__name__}: {exc}") from exc
        if len(out) != plain_len:
            raise _SectionFailure(f"section length {len(out)} != declared {plain_len}")
        return out

    def _decrypt_section(self, raw: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        assert self._key is not None and self.descriptor.iv is not None
        cipher = Cipher(algorithms.AES(self._key), modes.CBC(self.descriptor.iv))
        parts: list[bytes] = []
        p = 0
        while p < len(raw):
            if p + 8 > len(raw):
                raise _SectionFailure("truncated encrypted block header")
            enc_len, comp_len = _ENC_BLOCK.unpack_from(raw, p)
            p += 8
            if enc_len <= 0 or enc_len % 16 or p + enc_len > len(raw) or not 0 <= comp_len <= enc_len:
                raise _SectionFailure(f"bad encrypted block lengths {enc_len}/{comp_len}")
            dec = cipher.decryptor()
            plain = dec.update(raw[p:p + enc_len]) + dec.finalize()
            p += enc_len
            pad = plain[-1]
            if not 1 <= pad <= 16 or len(plain) - pad != comp_len:
                raise _SectionFailure("bad padding in encrypted block")
            if comp_len < 4:
                raise _SectionFailure("encrypted block too short")
            (raw_len,) = _INT.unpack_from(plain, 0)
            block = _lz4_block(plain[4:comp_len])
            if len(block) != raw_len:
                raise _SectionFailure("encrypted block length mismatch")
            parts.append(block)
        return b"".join(parts)

    def _entries(
        self, buf: bytes, lo: int, hi: int, base: int, marker: int, seg_id: int, start: int, limit: int | None,
    ) -> Iterator[Entry | SegmentError]:
        """Entries of the section ``buf[lo:hi]`` (logical offset ``base`` at ``lo``); sets ``_ended`` to end
        the whole segment (legacy end marker)."""
        crc32 = zlib.crc32
        unpack_head = _ENTRY_HEAD.unpack_from
        unpack_crc = _UINT.unpack_from
        size_crcs = _SIZE_CRCS
        stats = self.stats
        shift = base - lo  # logical offset = buffer offset + shift
        p = lo
        while p < hi:
            if hi - p < 8:
                if hi - p < 4:
                    if buf[p:hi] != bytes(hi - p):
                        yield self._error(marker, f"truncated entry at logical offset {p + shift}")
                    return
                if _INT.unpack_from(buf, p)[0] != 0:
                    yield self._error(marker, f"truncated entry at logical offset {p + shift}")
                self._ended, self._end_at = True, p + shift
                return
            size, crc = unpack_head(buf, p)
            if size == 0:
                self._ended, self._end_at = True, p + shift
                return
            if size_crcs.get(size) != crc:  # the CRC of a size depends on the size only: cached
                if crc32(buf[p:p + 4]) != crc:
                    yield self._error(marker, f"bad entry size CRC at logical offset {p + shift}")
                    return
                if len(size_crcs) < 65536:
                    size_crcs[size] = crc
            body = p + 8
            end = body + size + 4
            if size < MIN_ENTRY_SIZE or end > hi:
                yield self._error(marker, f"bad entry size {size} at logical offset {p + shift}")
                return
            data = buf[body:end - 4]
            if crc32(data, crc) != unpack_crc(buf, end - 4)[0]:
                if limit is not None and end + shift > limit:
                    return
                if p + shift >= start:
                    err = DamagedEntryError(self.path, marker, f"bad entry data CRC at logical offset {p + shift}",
                                            data=data, logical_offset=p + shift)
                    yield self._count(err)
                p = end
                continue
            if limit is not None and end + shift > limit:
                return
            if p + shift >= start:
                stats.entries += 1
                pos = _object_new(Position)
                _set_segment_id(pos, seg_id)
                _set_offset(pos, end + shift)
                yield _tuple_new(Entry, (pos, p + shift, data))
            p = end

    def _find_marker(self, frm: int, end: int) -> int | None:
        """Scan a plain segment for the next sync marker with a valid CRC and sane next offset."""
        data = self._data
        total = len(data)
        o = frm
        while o + 8 <= end:
            if data[o:o + 4] == _ZEROS4:
                # a real marker has next > 0: skip the zero run
                m = _NONZERO.search(data, o + 4, end)
                if m is None:
                    return None
                o = max(o + 1, m.start() - 3)
                continue
            nxt, crc = _MARKER.unpack_from(data, o)
            if o + 8 <= nxt <= total and crc == self._marker_crc(o):
                return o
            o += 1
        return None
