"""Uniform affine quantization: q = clamp(round(x / scale) + zp), x' = (q - zp) * scale.

All functions are pure and work per tensor (``axis=None``), per channel (``axis=k``) or per
group of ``group_size`` consecutive values along the last dimension.
"""

from __future__ import annotations

import torch

#: Smallest scale, so an all-zero channel does not divide by zero.
MIN_SCALE = 1e-12


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code. Signed ranges are symmetric (-2^(b-1)+1 .. 2^(b-1)-1)
    so that a symmetric scheme maps +-max to codes of equal magnitude."""
    if signed:
        return -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def storage_dtype(bits: int, signed: bool) -> torch.dtype:
    """The smallest torch integer dtype that holds the codes."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    if bits <= 16:
        return torch.int16 if signed else torch.int32
    return torch.int32


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """View ``x`` as (..., n_groups, group_size) along its last dimension."""
    if x.shape[-1] % group_size:
        raise ValueError(
            f"last dimension {x.shape[-1]} is not a multiple of group size {group_size}"
        )
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def compute_qparams(
    x: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point that cover ``x`` (kept-dim shapes, broadcastable to x).

    With ``group_size`` the result has shape (..., n_groups, 1) for ``grouped(x)``.
    Symmetric: signed codes, zero_point 0. Asymmetric: unsigned codes, zero point chosen so
    that real 0 is exactly representable.
    """
    x = x.detach().float()
    if group_size is not None:
        x = grouped(x, group_size)
        dims: tuple[int, ...] = (x.dim() - 1,)
    else:
        dims = _reduce_dims(x, axis)
    if symmetric:
        qmin, qmax = qrange(bits, signed=True)
        amax = x.abs().amax(dim=dims, keepdim=True)
        scale = (amax / qmax).clamp_min(MIN_SCALE)
        return scale, torch.zeros_like(scale)
    qmin, qmax = qrange(bits, signed=False)
    lo = x.amin(dim=dims, keepdim=True).clamp_max(0.0)
    hi = x.amax(dim=dims, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool
) -> torch.Tensor:
    """Integer codes (as float for autograd-friendly math; cast with ``storage_dtype``)."""
    qmin, qmax = qrange(bits, signed)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Real values of integer codes. Written once so every path is bit-identical."""
    return (q.float() - zero_point) * scale


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool
) -> torch.Tensor:
    """dequantize(quantize(x)), with a straight-through gradient in training."""
    dq = dequantize(quantize(x, scale, zero_point, bits, signed), scale, zero_point)
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (dq - x).detach()
    return dq


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x - x_hat).float().pow(2).sum()
    signal = x.float().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
