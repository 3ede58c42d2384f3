"""Dense codecs: raw bytes, exact 16-bit floats, and integer codes as one symbol stream
(``packed`` fixed-width bits, ``huffman``, ``ans``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from modelzip.codec.base import (
    SLOW_NS,
    Codec,
    code,
    fits_alphabet,
    from_bytes,
    ints,
    is_int,
    offsets,
    to_bytes,
    to_dtype,
    uncode,
)
from modelzip.codec.bits import Reader, unzigzag, varint, zigzag
from modelzip.errors import FormatError


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


class _Dense(Codec):
    """Integer codes as symbols (offset by their minimum), coded by one symbol coder."""

    def applies_to(self, t: torch.Tensor) -> bool:
        if not is_int(t) or t.numel() == 0:
            return False
        v = ints(t)
        return fits_alphabet(self.family, offsets(v)[1])

    def encode(self, t: torch.Tensor) -> bytes:
        v = ints(t)
        lo, off = offsets(v)
        return varint(zigzag(lo)) + code(self.family, off)

    def decode(self, data: memoryview, dtype: torch.dtype, n: int) -> torch.Tensor:
        if dtype.is_floating_point:
            raise FormatError(f"{self.name} codec stores integer tensors, not {dtype}")
        r = Reader(data, f"{self.name} payload")
        lo = unzigzag(r.varint())
        return to_dtype(uncode(self.family, r.take(r.remaining()), n), dtype, lo)

    def streams(self, t: torch.Tensor) -> list[np.ndarray]:
        v = ints(t)
        return [offsets(v)[1]] if self.family != "packed" else []

    def decode_ns(self, t: torch.Tensor) -> float:
        return SLOW_NS.get(self.family, 0.0) * t.numel()


class Packed(_Dense):
    name, family = "packed", "packed"


class Huffman(_Dense):
    name, family = "huffman", "huffman"


class Ans(_Dense):
    name, family = "ans", "ans"
