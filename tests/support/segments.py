"""Cassandra commit-log bytes for unit tests: Cassandra's own test segments (``tests/data/cassandra-commitlog``),
segments and entries built the way Cassandra writes them, and the primitives of its mutation serialization."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

TESTDATA = Path(__file__).resolve().parents[1] / "data" / "cassandra-commitlog"
TEST_KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")  # alias testing:1 of test-conf/cassandra.keystore


def _crc_int(crc: int, value: int) -> int:
    return zlib.crc32((value & 0xFFFFFFFF).to_bytes(4, "big"), crc)


def encode_entry(data: bytes) -> bytes:
    size = struct.pack(">i", len(data))
    size_crc = zlib.crc32(size)
    return size + struct.pack(">I", size_crc) + data + struct.pack(">I", zlib.crc32(data, size_crc))


def _lz4(raw: bytes) -> bytes:
    import lz4.block

    return struct.pack("<i", len(raw)) + lz4.block.compress(raw, store_size=False)


def _snappy(raw: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(raw))


def _zstd(raw: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdCompressor(write_checksum=True).compress(raw))


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "LZ4Compressor": _lz4, "SnappyCompressor": _snappy, "DeflateCompressor": zlib.compress, "ZstdCompressor": _zstd,
}


def _encrypt_blocks(raw: bytes, key: bytes, iv: bytes, chunk: int) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    out = b""
    for i in range(0, len(raw), chunk) if raw else [0]:
        block = raw[i:i + chunk]
        comp = struct.pack(">i", len(block)) + _lz4(block)
        padder = padding.PKCS7(128).padder()
        enc_in = padder.update(comp) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ct = enc.update(enc_in) + enc.finalize()
        out += struct.pack(">ii", len(ct), len(comp)) + ct
    return out


def build_segment(sections: Sequence[Sequence[bytes]], *, segment_id: int = 1700000000000, version: int = 7,
                  compressor: str | None = None, key: bytes | None = None, iv: bytes = bytes(range(16)),
                  chunk: int = 65536, pad_to: int = 0) -> bytes:
    """Write a segment the way Cassandra does: header, then one sync section per list of entries
    (mutation bytes). Plain segments end with a zero marker and are zero-padded to ``pad_to``."""
    params: dict[str, object] = {}
    if key is not None:
        params = {"encCipher": "AES/CBC/PKCS5Padding", "encIV": iv.hex(), "encKeyAlias": "testing:1"}
    elif compressor is not None:
        params = {"compressionClass": compressor, "compressionParameters": {}}
    ptext = json.dumps(params, separators=(",", ":"), sort_keys=True).encode()
    crc = _crc_int(_crc_int(_crc_int(_crc_int(0, version), segment_id), segment_id >> 32), len(ptext))
    out = bytearray(struct.pack(">iqH", version, segment_id, len(ptext)) + ptext)
    out += struct.pack(">I", zlib.crc32(ptext, crc))
    base = _crc_int(_crc_int(0, segment_id), segment_id >> 32)
    for entries in sections:
        raw = b"".join(encode_entry(e) for e in entries)
        if key is not None:
            body = struct.pack(">i", len(raw)) + _encrypt_blocks(raw, key, iv, chunk)
        elif compressor is not None:
            body = struct.pack(">i", len(raw)) + COMPRESSORS[compressor.rsplit(".", 1)[-1]](raw)
        else:
            body = raw
        marker = len(out)
        out += struct.pack(">iI", marker + 8 + len(body), zlib.crc32(marker.to_bytes(4, "big"), base)) + body
    if key is None and compressor is None:
        out += bytes(8)
    if len(out) < pad_to:
        out += bytes(pad_to - len(out))
    return bytes(out)


def read_hash_txt(path: Path) -> dict[str, str]:
    """The properties of a data set's ``hash.txt`` (``cells``, ``hash``, ``cfid``)."""
    props = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            props[k.strip()] = v.strip()
    return props


# ---------------------------------------------------------------------------------------------- mutation bytes

def uv(v: int) -> bytes:
    """Cassandra unsigned vint of a 64-bit pattern."""
    v &= (1 << 64) - 1
    for size in range(1, 9):
        if v < 1 << (7 * size):
            raw = bytearray(v.to_bytes(size, "big"))
            raw[0] |= ~(0xFF >> (size - 1)) & 0xFF
            return bytes(raw)
    return b"\xff" + v.to_bytes(8, "big")


def names(*cols: str) -> bytes:
    """A column name list as a PartitionUpdate header writes it."""
    return uv(len(cols)) + b"".join(uv(len(c)) + c.encode() for c in cols)


def i32(v: int) -> bytes:
    """A big-endian int (an ``int`` value, a key of an ``int`` partition key)."""
    return struct.pack(">i", v)
