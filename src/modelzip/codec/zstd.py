"""Fast codecs: zstd's entropy stage over byte-aligned symbols. Listed in ``codecs.CODECS``.

Integer codes are packed into the narrowest lane that divides a byte (1, 2, 4 or 8 bits), so
each byte holds whole symbols; wider codes use 16/32/64-bit lanes split into byte planes.
zstd (the ``zstandard`` library) then Huffman-codes the bytes with a fresh table every block,
which codes neighbouring symbols jointly and follows local statistics: on real 4-bit weight
codes this lands at the order-0 entropy of the codes while decoding at memory speed (about
1 ns a symbol against about 25 ns for ANS through constriction). Floats are split into byte
planes (sign and exponent bytes compress, mantissa bytes mostly do not). Sparse tensors store
the run of zeros before each nonzero as one byte (a byte 255 is a filler that skips 255 zeros)
and the nonzero values the same way as dense ones.

Frames are magicless, with the content size and no checksum (the container checksums every
payload). The decoder checks the declared content size against what the shape implies before
it allocates, and refuses trailing bytes after the frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import zstandard

from modelzip.codec.base import (
    Codec,
    from_bytes,
    ints,
    is_int,
    nonzero,
    offsets,
    to_bytes,
    to_dtype,
)
from modelzip.codec.bits import (
    LANES,
    Reader,
    from_lanes,
    lane_of,
    section,
    to_lanes,
    unzigzag,
    varint,
    zigzag,
)
from modelzip.codec.sparse import GapSparse, gaps_of, positions_of, sparse_streams
from modelzip.errors import FormatError

_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
#: zstd level for every input; inputs up to ``STRONG_MAX_BYTES`` also try ``STRONG_LEVEL`` and
#: keep the smaller frame (never larger than either level alone). On weight codes a high level
#: is often larger (4-bit codes of a 384 x 1536 layer: level 3 257,080 bytes, level 19
#: 257,797), on fp16 scale planes smaller; inputs over 1 MB stay at ``LEVEL`` (19 encodes
#: about 100x slower there).
LEVEL = 3
STRONG_LEVEL = 19
STRONG_MAX_BYTES = 1 << 20
#: Zero runs are stored one byte each; this value is the filler that skips that many zeros.
GAP_BYTE_CAP = 255
#: Largest window a frame may ask for (zstd's own default limit is 2^27).
MAX_WINDOW = 1 << 27


def _compress(raw: bytes, level: int) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        level, format=_FORMAT, write_checksum=0, write_content_size=1, write_dict_id=0
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def compress(raw: bytes) -> bytes:
    out = _compress(raw, LEVEL)
    if len(raw) <= STRONG_MAX_BYTES:
        strong = _compress(raw, STRONG_LEVEL)
        out = strong if len(strong) < len(out) else out
    return out


def decompress(data: bytes | memoryview, expected: int, what: str) -> bytes:
    """The ``expected`` bytes a frame holds; any other declared size is refused unallocated."""
    try:
        frame = zstandard.get_frame_parameters(data, format=_FORMAT)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: not a zstd frame ({exc})") from None
    if frame.content_size != expected:
        raise FormatError(f"{what}: frame declares {frame.content_size} bytes, expected {expected}")
    if frame.window_size > MAX_WINDOW:
        raise FormatError(f"{what}: frame window {frame.window_size} exceeds {MAX_WINDOW}")
    decompressor = zstandard.ZstdDecompressor(format=_FORMAT)
    try:
        out = decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: cannot decompress ({exc})") from None
    if len(out) != expected:
        raise FormatError(f"{what}: frame holds {len(out)} bytes, expected {expected}")
    return out


# ---------------------------------------------------------------------------- values


#: How float values are held in the frame: as stored, or narrowed to a 16-bit type that
#: represents every value exactly (never a lossy cast).
_FLOAT_FORMS = {0: None, 1: torch.float16, 2: torch.bfloat16}


def _narrowest_exact(t: torch.Tensor) -> int:
    if t.dtype == torch.float32:
        bits = t.contiguous().view(torch.int32)
        for form in (1, 2):
            half = _FLOAT_FORMS[form]
            if torch.equal(t.to(half).to(torch.float32).view(torch.int32), bits):
                return form
    return 0


def encode_values(t: torch.Tensor) -> bytes:
    """A flat tensor's values: ints as min + lanes; floats as one form byte, then the byte
    planes of the values (narrowed to 16 bits where that is exact)."""
    if is_int(t):
        v = ints(t)
        lo, off = offsets(v)
        lane = lane_of(int(off.max()) if off.size else 0)
        return varint(zigzag(lo)) + bytes([lane]) + compress(to_lanes(off, lane))
    form = _narrowest_exact(t)
    held = t if form == 0 else t.to(_FLOAT_FORMS[form])
    raw = np.frombuffer(to_bytes(held), dtype=np.uint8)
    planes = np.ascontiguousarray(raw.reshape(-1, held.element_size()).T)
    return bytes([form]) + compress(planes.tobytes())


def decode_values(r: Reader, dtype: torch.dtype, n: int, what: str) -> torch.Tensor:
    """Inverse of ``encode_values``; consumes the rest of ``r``."""
    if dtype.is_floating_point:
        form = r.take(1)[0]
        if form not in _FLOAT_FORMS or (form and dtype != torch.float32):
            raise FormatError(f"{what}: bad float form {form} for {dtype}")
        held = _FLOAT_FORMS[form] or dtype
        item = torch.empty(0, dtype=held).element_size()
        raw = decompress(r.take(r.remaining()), n * item, what)
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(item, n)
        out = from_bytes(np.ascontiguousarray(planes.T).tobytes(), held, n)
        return out if held == dtype else out.to(dtype)
    lo = unzigzag(r.varint())
    lane = r.take(1)[0]
    if lane not in LANES:
        raise FormatError(f"{what}: bad lane width {lane}; valid: {', '.join(map(str, LANES))}")
    raw = decompress(r.take(r.remaining()), (n * lane + 7) // 8, what)
    return to_dtype(from_lanes(raw, lane, n), dtype, lo)


class Zstd(Codec):
    """Any dense tensor: byte-aligned lanes (ints) or byte planes (floats), zstd-coded."""

    name, family = "zstd", "zstd"

    def applies_to(self, t: torch.Tensor) -> bool:
        return t.numel() > 0 and not t.is_complex()

    def encode(self, t: torch.Tensor) -> bytes:
        return encode_values(t.detach().cpu().reshape(-1))

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        r = Reader(data, f"{self.name} payload")
        return decode_values(r, dtype, n, f"{self.name} payload")

    def decode_gather(
        self, data: memoryview, dtype: torch.dtype, shape: list[int], table: torch.Tensor
    ) -> torch.Tensor | None:
        """2- and 4-bit codes: each stored byte indexes a 256-row table of the 4 or 2 values it
        encodes, so one gather yields several weights straight from the decompressed bytes."""
        if dtype.is_floating_point or dtype == torch.bool or table.dtype != torch.float32:
            return None
        what = f"{self.name} payload"
        r = Reader(data, what)
        lo = unzigzag(r.varint())
        lane = r.take(1)[0]
        n = math.prod(shape)
        if lane not in (2, 4) or lo < 0 or n == 0:
            return None  # the plain path decodes (and checks) every other layout
        raw = decompress(r.take(r.remaining()), (n * lane + 7) // 8, what)
        d = np.frombuffer(raw, dtype=np.uint8)
        per, mask = 8 // lane, (1 << lane) - 1
        top = mask  # no code can exceed the lane; scan only if the table is shorter than that
        if lo + mask >= min(table.numel(), torch.iinfo(dtype).max + 1):
            whole, rest = divmod(n, per)  # the last byte's unused lanes are padding: skip them
            top = 0
            for j in range(per):
                top = max(top, int(((d[:whole] >> np.uint8(j * lane)) & mask).max(initial=0)))
            for j in range(rest):
                top = max(top, (int(d[whole]) >> (j * lane)) & mask)
        if lo + top >= table.numel() or lo + top > torch.iinfo(dtype).max:
            raise FormatError(
                f"gather index out of range: codes span [{lo}, {lo + top}] but the table has "
                f"{table.numel()} entries"
            )
        values = np.zeros(mask + 1, dtype=np.float32)
        avail = min(mask + 1, table.numel() - lo)
        values[:avail] = table.detach().numpy()[lo : lo + avail]
        byte = np.arange(256)
        rows = np.stack([values[(byte >> (j * lane)) & mask] for j in range(per)], axis=1)
        item = np.int64 if per == 2 else np.complex128  # a row of 2 / 4 float32 as one item
        out = np.empty(d.size * per, dtype=np.float32)
        np.take(rows.view(item).reshape(256), d, out=out.view(item), mode="clip")
        return torch.from_numpy(out[:n])

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        if not is_int(t):
            return []
        v = ints(t)
        return [offsets(v)[1]]


class SparseZstd(Codec):
    """Many zeros: one byte per zero run (255 = filler), then the nonzero values, both zstd."""

    name, family = "sparse-zstd", "zstd"

    def applies_to(self, t: torch.Tensor) -> bool:
        return GapSparse.applies_to(self, t)  # type: ignore[arg-type]

    def encode(self, t: torch.Tensor) -> bytes:
        flat = t.detach().cpu().reshape(-1)
        nz = nonzero(flat).numpy()
        gaps = gaps_of(nz, GAP_BYTE_CAP).astype(np.uint8)
        vals = flat[torch.from_numpy(nz)]
        head = varint(gaps.size) + section(compress(gaps.tobytes()))
        return head + (encode_values(vals) if vals.numel() else b"")

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        what = f"{self.name} payload"
        r = Reader(data, what)
        m = r.varint(n + n // GAP_BYTE_CAP + 1)
        gaps = np.frombuffer(decompress(r.section(), m, what), dtype=np.uint8)
        pos = positions_of(gaps.astype(np.int64), GAP_BYTE_CAP, n)
        k = pos.size
        if k:
            vals = decode_values(r, dtype, k, what)
            if not bool(nonzero(vals).all()):
                raise FormatError("sparse values: a stored entry is zero (corrupted index)")
        else:
            r.done()
            vals = torch.zeros(0, dtype=dtype)
        out = torch.zeros(n, dtype=dtype)
        out[torch.from_numpy(pos)] = vals
        return out

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        return sparse_streams(t, GAP_BYTE_CAP)
