"""Uniform affine quantization: q = clamp(round(x / scale) + zp), x' = (q - zp) * scale.

All functions are pure and work per tensor (``axis=None``), per channel (``axis=k``) or per
group of ``group_size`` consecutive values along the last dimension.
"""

from __future__ import annotations

import math

import torch

#: Smallest scale, so an all-zero channel does not divide by zero.
MIN_SCALE = 1e-12
#: Code widths the uniform quantizer supports.
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


def check_bits(bits: int) -> int:
    """``bits`` itself, or a ValueError naming the valid widths."""
    if isinstance(bits, bool) or bits not in VALID_BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, VALID_BITS))}, got {bits!r}")
    return bits


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
    signed: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point that cover ``x`` (kept-dim shapes, broadcastable to x).

    With ``group_size`` the result has shape (..., n_groups, 1) for ``grouped(x)``.
    ``signed`` picks the code range (default: signed for symmetric, unsigned for asymmetric).
    Symmetric: zero point 0 (the unsigned variant is for non-negative data such as ReLU
    outputs). Asymmetric: zero point chosen so that real 0 is exactly representable.

    Example:
        >>> s, zp = compute_qparams(torch.tensor([-1.0, 0.5]), 8)
        >>> float(s * 127)
        1.0
    """
    x = x.detach().float()
    if group_size is not None:
        x = grouped(x, group_size)
        dims: tuple[int, ...] = (x.dim() - 1,)
    else:
        dims = _reduce_dims(x, axis)
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return qparams_from_range(lo, hi, bits, symmetric=symmetric, signed=signed)


def qparams_from_range(
    lo: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = True,
    signed: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point whose grid covers [lo, hi] (widened to include 0).

    Observers (calibration) produce clipped ranges and turn them into qparams here, so the
    weight and activation paths share one rule.
    """
    signed = symmetric if signed is None else signed
    qmin, qmax = qrange(bits, signed)
    lo = torch.as_tensor(lo, dtype=torch.float32).clamp_max(0.0)
    hi = torch.as_tensor(hi, dtype=torch.float32).clamp_min(0.0)
    if symmetric:
        if signed:
            amax = torch.maximum(lo.abs(), hi)
            scale = (amax / qmax).clamp_min(MIN_SCALE)
        else:  # non-negative data: the whole unsigned range above zero
            scale = (hi / qmax).clamp_min(MIN_SCALE)
        return scale, torch.zeros_like(scale)
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


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error between a tensor and its quantized version."""
    return float((x.float() - x_hat.float()).pow(2).mean())


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x - x_hat).float().pow(2).sum()
    signal = x.float().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


def lsq_fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool
) -> torch.Tensor:
    """Fake-quantize with a *learned* step size (LSQ, Esser et al. 2020).

    The rounding passes the gradient straight through; values clipped to the range pass their
    gradient to ``scale`` instead, and the scale's gradient is scaled by
    ``1 / sqrt(values per scale * qmax)`` so it learns at the rate of the weights.
    """
    qmin, qmax = qrange(bits, signed)
    g = 1.0 / math.sqrt(max(x.numel() / scale.numel(), 1.0) * qmax)
    s = scale.abs().clamp_min(MIN_SCALE)
    s = (s - s * g).detach() + s * g
    v = torch.clamp(x / s + zero_point, qmin, qmax)
    v = v + (torch.round(v) - v).detach()
    return (v - zero_point) * s
