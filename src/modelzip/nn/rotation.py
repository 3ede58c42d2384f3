"""Block Hadamard rotations of a layer's input features, for int8 activations.

A Linear layer computes the same product with its input rotated and its weight rotated the same
way: ``W x = (W R^T)(R x)`` for any orthogonal ``R``. With ``R`` block-diagonal, each block the
normalized Sylvester Hadamard matrix ``H_b`` (``b`` a power of two; ``H_b`` is symmetric and its
own inverse), one huge feature of a token is spread over the ``b`` features of its block, so the
token's largest magnitude, which sets its int8 step, shrinks by up to ``sqrt(b)`` while the
product does not change. This is QuaRot's idea at block size: measured on all-MiniLM-L6-v2 with
per-token int8 activations and SmoothQuant 0.5 on every Linear, blocks of 32 raised top-10
neighbour overlap from 0.956 to 0.975 (cosine 0.9991 -> 0.9998) at one int8 pass per layer, a
better result than the 16-bit rows of the worst layers (0.972 at 1.6x the int8 work); the
rotation itself is a ``[tokens * K / b, b] x [b, b]`` float product, ``b / N`` of the layer's
multiply-accumulates.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

#: the largest block: past it the rotation's float product costs more than it gains (on MiniLM
#: blocks of 128 gained 0.0003 top-10 overlap over 32 at four times the float work)
MAX_BLOCK = 256


def is_block(b: int) -> bool:
    """Whether ``b`` is a rotation block size: 0 (no rotation) or a power of two in 2..MAX_BLOCK."""
    return isinstance(b, int) and (b == 0 or (2 <= b <= MAX_BLOCK and b & (b - 1) == 0))


def block_for(features: int, largest: int) -> int:
    """The largest power of two ``<= largest`` that divides ``features`` (0 below 8: blocks that
    small barely spread an outlier; 0 when ``largest`` is 0)."""
    b = 1 << max(int(largest).bit_length() - 1, 0) if largest > 0 else 0
    while b >= 8 and features % b:
        b //= 2
    return b if b >= 8 else 0


@functools.lru_cache(maxsize=16)
def hadamard(b: int) -> torch.Tensor:
    """The normalized ``b x b`` Sylvester Hadamard matrix (orthogonal, symmetric, self-inverse)."""
    if not is_block(b) or b == 0:
        raise ValueError(f"Hadamard block size must be a power of two in 2..{MAX_BLOCK}, got {b!r}")
    # built in numpy: torch ops would be recorded when the first call comes during an ONNX
    # trace, and the cached tensor would then be a value of that trace, not a constant
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return torch.from_numpy(h / np.float32(math.sqrt(b)))


def rotate(x: torch.Tensor, b: int, block: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` with each block of ``b`` consecutive features of its last dimension multiplied by
    ``H_b`` (its own inverse: rotating twice gives ``x`` back up to rounding). ``b = 0``: ``x``.
    ``block``: ``H_b`` as the caller holds it (an ONNX export passes it in as an input)."""
    if b == 0:
        return x
    k = x.shape[-1]
    if k % b:
        raise ValueError(f"rotation block {b} does not divide the {k} input features")
    h = hadamard(b).to(x.dtype) if block is None else block
    return torch.matmul(x.unflatten(-1, (k // b, b)), h).flatten(-2)


def rotate_gram(gram: torch.Tensor, b: int) -> torch.Tensor:
    """The Gram matrix ``sum x^T x`` of the rotated inputs, from the unrotated one."""
    if b == 0:
        return gram
    h = hadamard(b).to(gram.dtype)
    k = gram.shape[0]
    g = torch.matmul(gram.unflatten(-1, (k // b, b)), h).flatten(-2)  # G R^T
    return torch.matmul(g.t().unflatten(-1, (k // b, b)), h).flatten(-2).t()  # R G R^T
