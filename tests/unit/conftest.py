"""Shared fixtures for the commit log reader tests: test data location and a segment builder."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "cassandra-commitlog"
TEST_KEY = bytes.fromhex("b7d96fb9b11d829179aeeb0b4e81f97a")


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The shared commit log test data; a missing copy is a failure, never a skip."""
    if not (TESTDATA / "README.md").is_file():
        pytest.fail(f"commit log test data missing at {TESTDATA}")
    return TESTDATA


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


@pytest.fixture(scope="session")
def segment_builder() -> Callable[..., bytes]:
    return build_segment


@pytest.fixture(scope="session")
def entry_encoder() -> Callable[[bytes], bytes]:
    return encode_entry


def read_hash_txt(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            props[k.strip()] = v.strip()
    return props


@pytest.fixture(scope="session")
def hash_props() -> Callable[[Path], dict[str, str]]:
    return read_hash_txt
