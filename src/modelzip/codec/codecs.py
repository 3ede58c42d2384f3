"""Per-field codecs: how one tensor of the compact vocabulary becomes one stored payload.

A codec maps a tensor to bytes and back, bit-exactly; the container records the codec name,
dtype and shape. The packer tries every applicable codec allowed by the coder choice and
keeps the smallest output (``encode_smallest``). Families:

- ``raw`` (any dtype), ``f16`` / ``bf16`` (float32 values that are *exactly* representable
  in 16 bits: never a lossy cast);
- dense integer codes: ``packed`` (fixed-width sub-byte bit packing), ``huffman``, ``ans``;
- sparse (many zeros): ``sparse-packed`` (Deep Compression's relative indices: fixed-width
  gaps with filler entries), ``sparse-huffman`` / ``sparse-ans`` (run lengths of zeros and
  nonzero codes, entropy coded), ``bitmask`` (one bit per element plus the nonzero values).

Every decoder checks lengths against its payload and the declared element count before it
allocates; violations raise ``FormatError``.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from modelzip.codec import entropy
from modelzip.codec.bits import (
    Reader,
    bit_width,
    pack,
    unpack,
    unzigzag,
    varint,
    zigzag,
)
from modelzip.errors import FormatError, choices_text

_CODECS: dict[str, type[Codec]] = {}

#: dtype names stored in the file (little-endian) and their torch types.
DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "f64": torch.float64,
    "i8": torch.int8,
    "u8": torch.uint8,
    "i16": torch.int16,
    "i32": torch.int32,
    "i64": torch.int64,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: Coder choices of the ``encode`` stage -> codec families allowed.
CODERS = {
    "auto": ("raw", "packed", "zstd", "huffman", "ans"),
    "zstd": ("raw", "packed", "zstd"),
    "ans": ("raw", "packed", "ans"),
    "huffman": ("raw", "packed", "huffman"),
    "packed": ("raw", "packed"),
    "raw": ("raw",),
}
#: Longest run of zeros one gap symbol can say (longer runs use filler symbols).
GAP_CAP = 1024
#: Sparse codecs are tried only when at least this fraction of elements are zero.
SPARSE_MIN_ZEROS = 0.3
#: The column-context mask coder decodes row by row: used on matrices up to this many rows.
COLUMN_MAX_ROWS = 8192
#: Huffman decodes in a Python loop: it is tried on streams up to this length only.
HUFFMAN_MAX_SYMBOLS = 2_000_000
#: Estimated decode time, ns per coded symbol, of the coders that decode symbol by symbol
#: (measured on the project's 2-core CI machine; ``benchmarks/mzip_coding.py``). Every other
#: codec decodes at memory speed (about 1-2 ns an element) and is not budgeted.
SLOW_NS = {"ans": 27.0, "huffman": 200.0, "mask-bit": 50.0, "mask-row": 7000.0}
#: Default for ``coder: auto``: how much estimated decode time the slow coders may add to
#: loading one file (they go where they save the most bytes per nanosecond). 0: files decode
#: at memory speed; zstd over byte-aligned codes is within a few percent of ANS.
DECODE_BUDGET_MS = 0.0


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise FormatError(f"cannot store dtype {dtype}; storable: {choices_text(DTYPES)}")
    return DTYPE_NAMES[dtype]


def to_bytes(t: torch.Tensor) -> bytes:
    """Little-endian raw bytes of a tensor (bf16 and bool included)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def from_bytes(data: bytes | memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
    """Inverse of ``to_bytes`` for ``n`` elements; checks the byte count."""
    item = torch.empty(0, dtype=dtype).element_size()
    if len(data) != n * item:
        raise FormatError(f"raw data: expected {n * item} bytes for {n} {dtype}, got {len(data)}")
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(data, dtype="<i2").copy()).view(torch.bfloat16)
    if dtype == torch.bool:
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()).to(torch.bool)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
    return torch.from_numpy(np.frombuffer(data, dtype=np_dtype).astype(np_dtype.newbyteorder("=")))


def _ints(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).to(torch.int64).numpy()


def offsets(v: np.ndarray) -> tuple[int, np.ndarray]:
    """(minimum, values - minimum) with the differences exact in uint64: an int64 tensor can
    span more than int64 itself holds."""
    lo = int(v.min()) if v.size else 0
    return lo, v.astype(np.uint64) - np.uint64(lo % (1 << 64))


def _is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex()


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Bitwise nonzero: -0.0 counts as a value, so sparse storage stays bit-exact."""
    if flat.is_floating_point():
        return flat.view(_SAME_SIZE_INT[flat.element_size()]) != 0
    return flat != 0


class Codec:
    """Base class: ``encode`` -> bytes; ``decode`` reverses it bit for bit."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "raw"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _CODECS[cls.name] = cls

    def applies_to(self, t: torch.Tensor) -> bool:
        return True

    def encode(self, t: torch.Tensor) -> bytes:
        raise NotImplementedError

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A flat tensor of ``n`` elements (the container reshapes it)."""
        raise NotImplementedError

    def decode_shaped(self, data: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        """Decode a tensor of ``shape`` (flat); codecs that need the shape override this."""
        return self.decode(data, dtype, math.prod(shape))

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        """The integer symbol streams this codec entropy-codes for ``t`` (for entropy bounds)."""
        return []

    def decode_gather(
        self, data: memoryview, dtype: torch.dtype, shape: list[int], table: torch.Tensor
    ) -> torch.Tensor | None:
        """``table[codes]`` (flat) for a payload of integer codes, gathered while decoding
        without materialising the codes; None when this codec has no such path (the caller
        then decodes the codes and gathers). Codes outside the table are a FormatError."""
        return None

    def decode_ns(self, t: torch.Tensor) -> float:
        """Estimated decode time of ``t`` when it decodes symbol by symbol; 0 for codecs that
        decode at memory speed."""
        return 0.0


class Raw(Codec):
    name = "raw"

    def encode(self, t: torch.Tensor) -> bytes:
        return to_bytes(t)

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        return from_bytes(data, dtype, n)


class _Half(Codec):
    """float32 values stored in 16 bits *only* when that is exact (lossless)."""

    half: ClassVar[torch.dtype] = torch.float16

    def applies_to(self, t: torch.Tensor) -> bool:
        if t.dtype != torch.float32 or t.numel() == 0:
            return False
        back = t.to(self.half).to(torch.float32)
        return bool(torch.equal(back.view(torch.int32), t.contiguous().view(torch.int32)))

    def encode(self, t: torch.Tensor) -> bytes:
        return to_bytes(t.to(self.half))

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        if dtype != torch.float32:
            raise FormatError(f"{self.name} codec stores float32 tensors, not {dtype}")
        return from_bytes(data, self.half, n).to(torch.float32)


class F16(_Half):
    name = "f16"
    half = torch.float16


class BF16(_Half):
    name = "bf16"
    half = torch.bfloat16


# ---------------------------------------------------------------------------- symbol coders


def _code(kind: str, symbols: np.ndarray) -> bytes:
    if kind == "packed":
        width = bit_width(int(symbols.max()) if symbols.size else 0)
        return bytes([width]) + pack(symbols, width)
    if kind == "huffman":
        return entropy.huffman_encode(symbols)
    return entropy.ans_encode(symbols)


def _uncode(kind: str, data: memoryview, n: int) -> np.ndarray:
    if kind == "packed":
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if len(data) < 1 or not 1 <= data[0] <= 64:
            raise FormatError("packed data: bad bit width")
        return unpack(data[1:], data[0], n)
    if kind == "huffman":
        return entropy.huffman_decode(data, n)
    return entropy.ans_decode(data, n)


def _fits_alphabet(kind: str, symbols: np.ndarray) -> bool:
    """Whether a symbol coder of family ``kind`` can code ``symbols`` (ANS and Huffman have a
    bounded alphabet; Huffman decodes in Python, so its streams are bounded too)."""
    if kind not in ("ans", "huffman"):
        return True
    if kind == "huffman" and symbols.size > HUFFMAN_MAX_SYMBOLS:
        return False
    return not symbols.size or int(symbols.max()) < entropy.ALPHABET_LIMIT


class _Dense(Codec):
    """Integer codes as symbols (offset by their minimum), coded by one symbol coder."""

    def applies_to(self, t: torch.Tensor) -> bool:
        if not _is_int(t) or t.numel() == 0:
            return False
        v = _ints(t)
        return _fits_alphabet(self.family, offsets(v)[1])

    def encode(self, t: torch.Tensor) -> bytes:
        v = _ints(t)
        lo, off = offsets(v)
        return varint(zigzag(lo)) + _code(self.family, off)

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        if dtype.is_floating_point:
            raise FormatError(f"{self.name} codec stores integer tensors, not {dtype}")
        r = Reader(data, f"{self.name} payload")
        lo = unzigzag(r.varint())
        return _to_dtype(_uncode(self.family, r.take(r.remaining()), n), dtype, lo)

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        v = _ints(t)
        return [offsets(v)[1]] if self.family != "packed" else []

    def decode_ns(self, t: torch.Tensor) -> float:
        return SLOW_NS.get(self.family, 0.0) * t.numel()


def _to_dtype(v: np.ndarray, dtype: torch.dtype, lo: int = 0) -> torch.Tensor:
    """The values ``v + lo`` as ``dtype``; refused when any does not fit. The range is checked
    on min/max first, so narrow decoded arrays convert without an int64 detour (the addition
    then wraps modulo 2^bits, which is exact for results inside the range)."""
    if dtype == torch.bool:
        lim_lo, lim_hi = 0, 1
    else:
        info = torch.iinfo(dtype)
        lim_lo, lim_hi = info.min, info.max
    if v.size and (int(v.min()) + lo < lim_lo or int(v.max()) + lo > lim_hi):
        raise FormatError(f"decoded values do not fit {dtype}")
    if dtype == torch.bool:
        return torch.from_numpy(v.astype(np.int64) + lo != 0)
    target = torch.empty(0, dtype=dtype).numpy().dtype
    out = v.astype(target)
    if lo:
        out += np.asarray((lo - lim_lo) % (lim_hi - lim_lo + 1) + lim_lo, dtype=target)
    return torch.from_numpy(out)


class Packed(_Dense):
    name, family = "packed", "packed"


class Huffman(_Dense):
    name, family = "huffman", "huffman"


class Ans(_Dense):
    name, family = "ans", "ans"


# ------------------------------------------------------------------------------- choice


def get_codec(name: str) -> Codec:
    """A codec instance by name; unknown names are a FormatError naming the known ones."""
    cls = _CODECS.get(name)
    if cls is None:
        raise FormatError(f"unknown codec {name!r}; known codecs: {choices_text(_CODECS)}")
    return cls()


def codec_names() -> list[str]:
    return sorted(_CODECS)


def candidates(coder: str = "auto") -> list[str]:
    """Codec names allowed by a coder choice (``auto`` allows all)."""
    if coder not in CODERS:
        raise FormatError(f"unknown coder {coder!r}; valid: {choices_text(CODERS)}")
    fams = CODERS[coder]
    return [n for n, c in sorted(_CODECS.items()) if c.family in fams]


class Option(NamedTuple):
    """One codec's encoding of a tensor and its estimated decode time."""

    codec: str
    data: bytes
    decode_ns: float


def encode_options(t: torch.Tensor, coder: str = "auto") -> tuple[Option, Option | None]:
    """Encode with every applicable allowed codec: (the smallest output among codecs that
    decode at memory speed, the smallest among slow ones when it is smaller still)."""
    t = t.detach().cpu()
    fast: Option | None = None
    slow: Option | None = None
    for name in candidates(coder):
        codec = get_codec(name)
        if not codec.applies_to(t):
            continue
        data = codec.encode(t)
        cost = codec.decode_ns(t)
        if cost == 0.0 and (fast is None or len(data) < len(fast.data)):
            fast = Option(name, data, 0.0)
        elif cost > 0.0 and (slow is None or len(data) < len(slow.data)):
            slow = Option(name, data, cost)
    if fast is None:
        raise FormatError(f"no codec allowed by coder {coder!r} can store a {t.dtype} tensor")
    return fast, (slow if slow is not None and len(slow.data) < len(fast.data) else None)


def choose(options: list[tuple[Option, Option | None]], budget_ns: float) -> list[Option]:
    """Per tensor, the slow (smaller) encoding where it saves the most bytes per estimated
    decode nanosecond, until the slow ones together reach ``budget_ns``; the fast one elsewhere.
    Deterministic: ties keep tensor order."""
    picked = [fast for fast, _ in options]
    slow_ones = [(i, fast, slow) for i, (fast, slow) in enumerate(options) if slow is not None]
    slow_ones.sort(key=lambda x: -(len(x[1].data) - len(x[2].data)) / max(x[2].decode_ns, 1e-9))
    spent = 0.0
    for i, _, slow in slow_ones:
        if spent + slow.decode_ns <= budget_ns:
            picked[i] = slow
            spent += slow.decode_ns
    return picked


def encode_smallest(t: torch.Tensor, coder: str = "auto") -> tuple[str, bytes]:
    """Encode with every applicable allowed codec and keep the smallest output."""
    fast, slow = encode_options(t, coder)
    best = slow or fast
    return best.codec, best.data


# Sparse and zstd codecs live in their own modules; importing them registers them.
from modelzip.codec import sparse as _sparse  # noqa: E402,F401
from modelzip.codec import zstd as _zstd  # noqa: E402,F401
