"""What every per-field codec shares: the stored dtypes, the ``Codec`` interface, raw
byte conversion, integer-code helpers and the symbol coders' entry points.

The codec modules (``dense``, ``sparse``, ``zstd``) import this module and nothing of each
other's private parts; ``codecs`` lists them in one explicit table.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from modelzip.codec import entropy
from modelzip.codec.bits import (
    bit_width,
    pack,
    unpack,
)
from modelzip.errors import FormatError, choices_text

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


def ints(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().reshape(-1).to(torch.int64).numpy()


def offsets(v: np.ndarray) -> tuple[int, np.ndarray]:
    """(minimum, values - minimum) with the differences exact in uint64: an int64 tensor can
    span more than int64 itself holds."""
    lo = int(v.min()) if v.size else 0
    return lo, v.astype(np.uint64) - np.uint64(lo % (1 << 64))


def is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex()


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Bitwise nonzero: -0.0 counts as a value, so sparse storage stays bit-exact."""
    if flat.is_floating_point():
        return flat.view(_SAME_SIZE_INT[flat.element_size()]) != 0
    return flat != 0


class Codec:
    """Base class: ``encode`` -> bytes; ``decode`` reverses it bit for bit."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = "raw"

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


# ---------------------------------------------------------------------------- symbol coders


def code(kind: str, symbols: np.ndarray) -> bytes:
    if kind == "packed":
        width = bit_width(int(symbols.max()) if symbols.size else 0)
        return bytes([width]) + pack(symbols, width)
    if kind == "huffman":
        return entropy.huffman_encode(symbols)
    return entropy.ans_encode(symbols)


def uncode(kind: str, data: memoryview, n: int) -> np.ndarray:
    if kind == "packed":
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if len(data) < 1 or not 1 <= data[0] <= 64:
            raise FormatError("packed data: bad bit width")
        return unpack(data[1:], data[0], n)
    if kind == "huffman":
        return entropy.huffman_decode(data, n)
    return entropy.ans_decode(data, n)


def fits_alphabet(kind: str, symbols: np.ndarray) -> bool:
    """Whether a symbol coder of family ``kind`` can code ``symbols`` (ANS and Huffman have a
    bounded alphabet; Huffman decodes in Python, so its streams are bounded too)."""
    if kind not in ("ans", "huffman"):
        return True
    if kind == "huffman" and symbols.size > HUFFMAN_MAX_SYMBOLS:
        return False
    return not symbols.size or int(symbols.max()) < entropy.ALPHABET_LIMIT


def to_dtype(v: np.ndarray, dtype: torch.dtype, lo: int = 0) -> torch.Tensor:
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
