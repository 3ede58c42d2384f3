"""Byte-level building blocks: varints, sections, fixed-width bit packing, bitmaps.

All readers are bounds-checked: a count or length read from a file is checked against the
bytes that remain before anything is allocated, and violations raise ``FormatError``.
"""

from __future__ import annotations

import numpy as np

from modelzip.errors import FormatError


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    if n < 0:
        raise ValueError(f"varint needs n >= 0, got {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n: int) -> int:
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def unzigzag(z: int) -> int:
    return (z >> 1) if not z & 1 else -((z + 1) >> 1)


class Reader:
    """Sequential, bounds-checked reader over a payload."""

    def __init__(self, data: bytes | memoryview, what: str = "payload") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def varint(self, limit: int = (1 << 64) - 1) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.data):
                raise FormatError(f"{self.what}: truncated (varint runs past the end)")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise FormatError(f"{self.what}: malformed varint")
        if n > limit:
            raise FormatError(f"{self.what}: value {n} exceeds its limit {limit}")
        return n

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining():
            raise FormatError(
                f"{self.what}: needs {n} bytes but only {self.remaining()} remain (truncated?)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def section(self) -> memoryview:
        """A length-prefixed block."""
        return self.take(self.varint(self.remaining()))

    def done(self) -> None:
        if self.remaining():
            raise FormatError(f"{self.what}: {self.remaining()} unexpected trailing bytes")


def section(b: bytes) -> bytes:
    return varint(len(b)) + b


def bit_width(max_value: int) -> int:
    """Bits needed for values 0..max_value (at least 1)."""
    return max(1, int(max_value).bit_length())


#: Lane widths (bits) that tile bytes exactly: sub-byte lanes never straddle a byte.
LANES = (1, 2, 4, 8, 16, 32, 64)


def lane_of(max_value: int) -> int:
    """Narrowest lane holding 0..max_value."""
    need = bit_width(max_value)
    return next(lane for lane in LANES if lane >= need)


def to_lanes(values: np.ndarray, lane: int) -> bytes:
    """Non-negative ints in ``lane``-bit lanes: sub-byte lanes LSB-first inside each byte
    (the same bytes as ``pack``), wider lanes as little-endian byte planes (all low bytes
    first), which byte-oriented compressors model far better than interleaved bytes."""
    v = np.asarray(values).ravel()
    if lane >= 8:
        b = v.astype(f"<u{lane // 8}").view(np.uint8).reshape(-1, lane // 8)
        return np.ascontiguousarray(b.T).tobytes()
    per = 8 // lane
    flat = np.zeros(-(-v.size // per) * per, dtype=np.uint8)
    flat[: v.size] = v
    u = flat.reshape(-1, per)
    out = u[:, 0].copy()
    for j in range(1, per):
        out |= u[:, j] << np.uint8(j * lane)
    return out.tobytes()


def from_lanes(data: bytes | memoryview, lane: int, n: int) -> np.ndarray:
    """Inverse of ``to_lanes``: ``n`` values in the narrowest unsigned numpy type (checks
    the byte count first)."""
    need = (n * lane + 7) // 8
    if len(data) != need:
        raise FormatError(
            f"lane data: expected {need} bytes for {n} x {lane} bits, got {len(data)}"
        )
    d = np.frombuffer(data, dtype=np.uint8)
    if lane >= 8:
        width = lane // 8
        return np.ascontiguousarray(d.reshape(width, n).T).view(f"<u{width}").reshape(n)
    if lane == 1:
        return np.unpackbits(d, bitorder="little")[:n]
    per, mask = 8 // lane, np.uint8((1 << lane) - 1)
    out = np.empty((d.size, per), dtype=np.uint8)
    for j in range(per):
        np.bitwise_and(d >> np.uint8(j * lane), mask, out=out[:, j])
    return out.reshape(-1)[:n]


def pack(values: np.ndarray, width: int) -> bytes:
    """Fixed-width little-endian-bit packing of non-negative integers (< 2^width)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    if width in (1, 2, 4, 8):
        return to_lanes(v, width)
    bits = np.empty((v.size, width), dtype=np.uint8)
    for i in range(width):
        bits[:, i] = (v >> np.uint64(i)) & np.uint64(1)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack(data: bytes | memoryview, width: int, n: int) -> np.ndarray:
    """Inverse of ``pack``; checks the byte count first. Byte-aligned widths come back in
    ``uint8``, others in ``uint64``."""
    need = (n * width + 7) // 8
    if len(data) != need:
        raise FormatError(
            f"packed data: expected {need} bytes for {n} x {width} bits, got {len(data)}"
        )
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if width in (1, 2, 4, 8):
        return from_lanes(data, width, n)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * width]
    b = bits.reshape(n, width)
    out = np.zeros(n, dtype=np.uint64)
    for i in range(width):
        out |= b[:, i].astype(np.uint64) << np.uint64(i)
    return out


def bitmap(flags: np.ndarray) -> bytes:
    return np.packbits(np.asarray(flags, dtype=bool).ravel(), bitorder="little").tobytes()


def unbitmap(data: bytes | memoryview, n: int) -> np.ndarray:
    if len(data) != (n + 7) // 8:
        raise FormatError(f"bitmap: expected {(n + 7) // 8} bytes for {n} flags, got {len(data)}")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:n].astype(bool)
