"""Lossless entropy coding of code arrays for storage: rANS (constriction) or zstd.

    blob = pack(codes, method="rans", field_bits=codec.field_bits)
    assert np.array_equal(unpack(blob), codes)
    rows = unpack_block(blob, 3)          # one block, without touching the others

Codes are split into their fields (``field_bits``, MSB-first; whole bytes by default) and each
field column gets its own categorical model, so variable-width scalar codes (NUQ) and 4-bit
PQ codes are modelled symbol by symbol rather than byte by byte. Models are static: fitted
once over all rows (``model="global"``, stored in the header, so every block decodes on its
own with the header) or per block (``model="block"``). ``method="zstd"`` is the baseline:
field columns laid out column-major and compressed with zstandard.

Blob layout (little-endian)::

    b"MMCE" | u16 version | u32 header length | header JSON | u32 CRC32(header JSON) | blocks

The header holds the shape, field widths, method, the global model tables, each block's
offset, length and CRC32, and the SHA-256 of all block bytes. Frequency tables are stored as
one byte per symbol, ``ceil(255 * sqrt(count / max))``, and used as the exact integer weights
``byte**2`` - integers, so encoder and decoder build bit-identical models on any platform.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmcompress.errors import ArtifactError, CodecError

MAGIC = b"MMCE"
VERSION = 1
METHODS = ("rans", "zstd")
MODELS = ("global", "block")

__all__ = ["PackedHeader", "pack", "packed_size", "read_header", "unpack", "unpack_block"]


@dataclass(frozen=True)
class PackedHeader:
    """What :func:`read_header` finds at the front of a blob."""

    method: str
    model: str
    n_rows: int
    code_size: int
    field_bits: tuple[int, ...]
    block_rows: int
    blocks: tuple[tuple[int, int, int], ...]  # (offset in payload, length, crc32)
    payload_sha256: str
    tables: bytes
    payload_start: int

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


# ---- fields -------------------------------------------------------------------------------
def _check_field_bits(field_bits: list[int] | tuple[int, ...] | None, code_size: int) -> tuple[int, ...]:
    if field_bits is None:
        return (8,) * code_size
    fb = tuple(int(b) for b in field_bits)
    if any(not 1 <= b <= 16 for b in fb):
        raise CodecError(f"field widths must be 1..16 bits; found {sorted(set(fb))}")
    if sum(fb) != 8 * code_size:
        raise CodecError(f"field_bits sum to {sum(fb)} bits but codes have {8 * code_size} bits per row")
    return fb


def split_fields(codes: np.ndarray, field_bits: tuple[int, ...]) -> np.ndarray:
    """(n, code_size) uint8 -> (n, n_fields) int32 field values (MSB-first bit order)."""
    if all(b == 8 for b in field_bits):
        return codes.astype(np.int32)
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    weights = np.concatenate([1 << np.arange(b - 1, -1, -1) for b in field_bits]).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(field_bits)[:-1]])
    return np.add.reduceat(bits * weights, starts, axis=1).astype(np.int32)


def join_fields(fields: np.ndarray, field_bits: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`split_fields`."""
    if all(b == 8 for b in field_bits):
        return fields.astype(np.uint8)
    n = len(fields)
    wide = np.ascontiguousarray(fields, dtype=">u2").view(np.uint8).reshape(n, len(field_bits), 2)
    bits = np.unpackbits(wide, axis=2).reshape(n, -1)
    pick = np.concatenate([i * 16 + np.arange(16 - b, 16) for i, b in enumerate(field_bits)])
    return np.packbits(bits[:, pick], axis=1)


# ---- models -------------------------------------------------------------------------------
def _table(values: np.ndarray, bits: int) -> np.ndarray:
    counts = np.bincount(values, minlength=1 << bits).astype(np.float64)
    scaled = np.ceil(255.0 * np.sqrt(counts / max(counts.max(), 1.0)))
    return scaled.astype(np.uint8)


def _tables(fields: np.ndarray, field_bits: tuple[int, ...]) -> bytes:
    return b"".join(_table(fields[:, f], b).tobytes() for f, b in enumerate(field_bits))


def _models(tables: bytes, field_bits: tuple[int, ...]) -> list[Any]:
    import constriction

    arr = np.frombuffer(tables, dtype=np.uint8)
    if len(arr) != sum(1 << b for b in field_bits):
        raise ArtifactError("entropy model tables have the wrong size for the field widths")
    models, pos = [], 0
    for b in field_bits:
        weights = arr[pos:pos + (1 << b)].astype(np.float64) ** 2
        pos += 1 << b
        if not weights.any():
            weights[0] = 1.0
        models.append(constriction.stream.model.Categorical(weights, perfect=False))
    return models


def _rans_encode(fields: np.ndarray, models: list[Any]) -> bytes:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    for f in range(fields.shape[1] - 1, -1, -1):
        coder.encode_reverse(np.ascontiguousarray(fields[:, f]), models[f])
    return coder.get_compressed().astype("<u4").tobytes()


def _rans_decode(data: bytes, models: list[Any], n_rows: int) -> np.ndarray:
    import constriction

    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    out = np.empty((n_rows, len(models)), dtype=np.int32)
    for f, model in enumerate(models):
        out[:, f] = coder.decode(model, n_rows)
    return out


def _zstd_encode(fields: np.ndarray, field_bits: tuple[int, ...], level: int) -> bytes:
    import zstandard

    dtype = np.uint8 if max(field_bits) <= 8 else np.dtype("<u2")
    return zstandard.ZstdCompressor(level=level).compress(np.ascontiguousarray(fields.T.astype(dtype)).tobytes())


def _zstd_decode(data: bytes, field_bits: tuple[int, ...], n_rows: int) -> np.ndarray:
    import zstandard

    dtype = np.uint8 if max(field_bits) <= 8 else np.dtype("<u2")
    raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=n_rows * len(field_bits) * 2 + 64)
    return np.frombuffer(raw, dtype=dtype).reshape(len(field_bits), n_rows).T.astype(np.int32)


# ---- blob ---------------------------------------------------------------------------------
def pack(codes: np.ndarray, method: str = "rans", *, field_bits: list[int] | tuple[int, ...] | None = None,
         block_rows: int = 65536, model: str = "global", level: int = 12) -> bytes:
    """Losslessly compress a (n, code_size) uint8 code array into independently decodable blocks."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise CodecError(f"codes must be a 2-D uint8 array; found {codes.dtype} {codes.shape}")
    if method not in METHODS:
        raise CodecError(f"unknown entropy coding method {method!r}; expected one of {METHODS}")
    if model not in MODELS:
        raise CodecError(f"unknown entropy model {model!r}; expected one of {MODELS}")
    if block_rows < 1:
        raise CodecError(f"block_rows must be >= 1; found {block_rows}")
    n, code_size = codes.shape
    fb = _check_field_bits(field_bits, code_size)
    fields = split_fields(np.ascontiguousarray(codes), fb)
    global_tables = b""
    if method == "rans" and model == "global" and n:
        global_tables = _tables(fields, fb)
        global_models = _models(global_tables, fb)
    blocks, parts, offset = [], [], 0
    for start in range(0, n, block_rows):
        block = fields[start:start + block_rows]
        if method == "zstd":
            data = _zstd_encode(block, fb, level)
        elif model == "global":
            data = _rans_encode(block, global_models)
        else:
            tables = _tables(block, fb)
            data = struct.pack("<I", len(tables)) + tables + _rans_encode(block, _models(tables, fb))
        blocks.append([offset, len(data), zlib.crc32(data)])
        parts.append(data)
        offset += len(data)
    payload = b"".join(parts)
    header = {
        "method": method, "model": model if method == "rans" else "none", "n_rows": n,
        "code_size": code_size, "field_bits": _run_length(fb), "block_rows": block_rows,
        "blocks": blocks, "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "tables": base64.b64encode(_compress_tables(global_tables)).decode("ascii"),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<HI", VERSION, len(head)) + head + struct.pack("<I", zlib.crc32(head)) + payload


def _run_length(fb: tuple[int, ...]) -> list[list[int]]:
    out: list[list[int]] = []
    for b in fb:
        if out and out[-1][0] == b:
            out[-1][1] += 1
        else:
            out.append([b, 1])
    return out


def _compress_tables(tables: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(tables) if tables else b""


def read_header(blob: bytes) -> PackedHeader:
    """Parse and verify the header of a packed blob (magic, version, header CRC)."""
    import zstandard

    blob = bytes(blob) if not isinstance(blob, bytes | memoryview) else blob
    if len(blob) < 14 or bytes(blob[:4]) != MAGIC:
        raise ArtifactError("not a packed code blob (bad magic or truncated)")
    version, head_len = struct.unpack_from("<HI", blob, 4)
    if version != VERSION:
        raise ArtifactError(f"packed code blob has version {version}; this reader supports {VERSION}")
    end = 10 + head_len
    if len(blob) < end + 4:
        raise ArtifactError("packed code blob is truncated inside its header")
    head = bytes(blob[10:end])
    (crc,) = struct.unpack_from("<I", blob, end)
    if zlib.crc32(head) != crc:
        raise ArtifactError("packed code blob header checksum mismatch (tampered or corrupt)")
    try:
        h = json.loads(head)
        fb = tuple(b for b, count in h["field_bits"] for _ in range(count))
        tables_z = base64.b64decode(h["tables"])
        tables = zstandard.ZstdDecompressor().decompress(tables_z, max_output_size=1 << 28) if tables_z else b""
        return PackedHeader(h["method"], h["model"], int(h["n_rows"]), int(h["code_size"]), fb,
                            int(h["block_rows"]), tuple(tuple(b) for b in h["blocks"]),
                            h["payload_sha256"], tables, end + 4)
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as e:
        raise ArtifactError(f"packed code blob header is malformed: {e!r}") from e


def _decode_block(blob: bytes, h: PackedHeader, i: int, models: list[Any] | None) -> np.ndarray:
    offset, length, crc = h.blocks[i]
    start = h.payload_start + offset
    data = bytes(blob[start:start + length])
    if len(data) != length or zlib.crc32(data) != crc:
        raise ArtifactError(f"packed code block {i} is truncated or corrupt (CRC mismatch)")
    rows = min(h.block_rows, h.n_rows - i * h.block_rows)
    try:
        if h.method == "zstd":
            fields = _zstd_decode(data, h.field_bits, rows)
        elif h.model == "global":
            fields = _rans_decode(data, models, rows)
        else:
            (tlen,) = struct.unpack_from("<I", data, 0)
            fields = _rans_decode(data[4 + tlen:], _models(data[4:4 + tlen], h.field_bits), rows)
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"packed code block {i} cannot be decoded: {e}") from e
    return join_fields(fields, h.field_bits)


def unpack_block(blob: bytes, i: int) -> np.ndarray:
    """Rows of block ``i`` only (blocks hold ``block_rows`` consecutive rows)."""
    h = read_header(blob)
    if not 0 <= i < h.n_blocks:
        raise CodecError(f"block index {i} out of range; the blob has {h.n_blocks} blocks")
    models = _models(h.tables, h.field_bits) if h.method == "rans" and h.model == "global" else None
    return _decode_block(blob, h, i, models)


def unpack(blob: bytes) -> np.ndarray:
    """Every row of a blob written by :func:`pack`, bit-identical to the packed codes."""
    h = read_header(blob)
    payload = bytes(blob[h.payload_start:])
    if hashlib.sha256(payload).hexdigest() != h.payload_sha256:
        raise ArtifactError("packed code payload checksum mismatch (truncated or tampered)")
    if h.n_rows == 0:
        return np.zeros((0, h.code_size), dtype=np.uint8)
    models = _models(h.tables, h.field_bits) if h.method == "rans" and h.model == "global" else None
    return np.concatenate([_decode_block(blob, h, i, models) for i in range(h.n_blocks)])


def packed_size(codes: np.ndarray, method: str = "rans", **kwargs: Any) -> int:
    """Bytes that :func:`pack` produces for ``codes`` (header and model tables included)."""
    return len(pack(codes, method, **kwargs))
