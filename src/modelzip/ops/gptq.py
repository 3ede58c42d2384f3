"""Group-wise asymmetric low-bit codes, round-to-nearest and GPTQ (Frantar et al. 2022).

A weight matrix ``w`` (out x in) is stored as codes ``q`` in [0, 2^bits - 1], one fp16-exact
scale and one integer zero point per (row, group of ``group_size`` consecutive inputs):
``w_hat = (q - zero_point) * scale``. ``rtn`` rounds every weight to its nearest grid point;
``gptq`` quantizes one input column at a time and spreads each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's
calibration inputs, so the layer's *output* error ``||X w^T - X w_hat^T||`` shrinks (the
optimal brain surgeon update, processed in column blocks with lazy batch updates).

Pure functions on tensors: no module walking, I/O or logging here.

Example:
    >>> w = torch.randn(8, 64); x = torch.randn(256, 64)
    >>> res = gptq(w, hessian(x), bits=4, group_size=32)
    >>> output_error(x, w, res.w_hat) < output_error(x, w, rtn(w, bits=4, group_size=32).w_hat)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Smallest scale: a normal fp16 number (all-zero groups), so fp16 storage stays exact.
MIN_SCALE = 2.0**-14
#: Code widths of the low-bit grid.
LOWBIT_BITS = (2, 3, 4, 5, 6, 7, 8)
#: Shrink factors tried by the MSE clipping search (1.0 is plain min/max).
CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(9))


@dataclass(frozen=True)
class Codes:
    """Low-bit codes of a (out x in) matrix: ``w_hat = (qdata - zero_point) * scale``.

    ``scale`` and ``zero_point`` have shape (out, in // group_size). ``damp`` is the relative
    dampening GPTQ used (0 for round-to-nearest)."""

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    w_hat: torch.Tensor
    damp: float = 0.0


def check_group(columns: int, group_size: int | None) -> int:
    """The group size for ``columns`` inputs (``None``: one group per row)."""
    if group_size is None:
        return columns
    if group_size < 1 or columns % group_size:
        raise ValueError(f"group size {group_size} does not divide the {columns} input columns")
    return group_size


def fit_group_size(columns: int, wanted: int | None) -> int:
    """The largest divisor of ``columns`` in [wanted/2, wanted]; else the whole row.

    Lets one recipe (``group_size: 128``) fit layers whose width it does not divide
    (400 inputs -> groups of 100; 84 -> one group per row)."""
    if wanted is None or wanted >= columns:
        return columns
    for g in range(wanted, max(1, wanted // 2) - 1, -1):
        if columns % g == 0:
            return g
    return columns


def grid_params(
    w: torch.Tensor, bits: int, *, clip_search: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-exact) and zero point per row of ``w`` (rows = groups), covering 0.

    With ``clip_search`` the range is shrunk by the factor in ``CLIP_GRID`` that minimises
    the squared rounding error of the row itself."""
    qmax = 2**bits - 1
    lo = w.amin(dim=1).clamp_max(0.0)
    hi = w.amax(dim=1).clamp_min(0.0)
    best_s, best_z = _params(lo, hi, qmax)
    if not clip_search:
        return best_s, best_z
    best_err = _row_error(w, best_s, best_z, qmax)
    for f in CLIP_GRID[1:]:
        s, z = _params(lo * f, hi * f, qmax)
        err = _row_error(w, s, z, qmax)
        better = err < best_err
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
        best_err = torch.where(better, err, best_err)
    return best_s, best_z


def _params(lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = ((hi - lo) / qmax).clamp_min(MIN_SCALE).half().float()
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def _row_error(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
    q = quantize(w, s[:, None], z[:, None], qmax)
    return (dequantize(q, s[:, None], z[:, None]) - w).pow(2).sum(dim=1)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int) -> torch.Tensor:
    """Codes (as float) of ``w`` on the grid."""
    return torch.clamp(torch.round(w / scale) + zero, 0, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The one formula every path (fake-quant, loader) uses, so values match bit for bit."""
    return (q.float() - zero.float()) * scale.float()


def dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``w_hat`` (out x in) from codes (out x in) and per-group (out x groups) parameters."""
    rows, cols = q.shape
    groups = scale.shape[1]
    qg = q.reshape(rows, groups, cols // groups)
    return dequantize(qg, scale[:, :, None], zero[:, :, None]).reshape(rows, cols)


#: Steps per octave of the 8-bit log grid of ``log_scales``: a scale moves by at most
#: 2^(1/64) - 1 = 1.1% when rounded, far below a 2..8-bit code's own rounding error.
LOG_SCALE_STEPS = 32
#: Fewest groups a row needs for log codes to pay for the row's own fp16 reference scale.
LOG_SCALE_MIN_GROUPS = 4
#: ``2^(-k / LOG_SCALE_STEPS)`` for every 8-bit code ``k``, rounded once from float64 so the
#: loader's float32 product is the same on every machine (no libm ``exp2`` in the path).
_LOG_TABLE = torch.tensor([2.0 ** (-k / LOG_SCALE_STEPS) for k in range(256)], dtype=torch.float32)


def from_log_scales(codes: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Scales (rows x groups) from their 8-bit log codes and each row's largest scale."""
    return top.float()[:, None] * _LOG_TABLE[codes.long()]


def log_scales(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """8-bit log codes of positive scales (rows x groups) and each row's reference scale (fp16):
    ``scale ~= top[r] * 2^(-code / LOG_SCALE_STEPS)``. Scales within a row span a few octaves
    (MiniLM: at most 6.5), so the codes cluster near 0 and entropy-code to about 5 bits
    instead of fp16's 11. None when some scale lies below the 8 octaves the codes reach
    (the caller keeps fp16 scales then), and when rows have under ``LOG_SCALE_MIN_GROUPS``
    groups (the per-row reference would cost more than the codes save)."""
    if scale.dim() != 2 or scale.shape[1] < LOG_SCALE_MIN_GROUPS:
        return None
    top = scale.float().amax(dim=1).clamp_min(MIN_SCALE).half()
    ratio = scale.float() / top.float()[:, None]
    k = torch.round(-LOG_SCALE_STEPS * torch.log2(ratio.clamp_min(1e-30))).clamp_min(0)
    if scale.numel() and float(k.max()) > 255:
        return None
    return k.to(torch.uint8), top


def _check(w: torch.Tensor, bits: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}")
    if bits not in LOWBIT_BITS:
        raise ValueError(f"bits must be one of {LOWBIT_BITS}, got {bits!r}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight holds NaN or inf values")


def rtn(
    w: torch.Tensor, *, bits: int, group_size: int | None = None, clip_search: bool = True
) -> Codes:
    """Round-to-nearest group-wise codes of ``w`` (out x in)."""
    _check(w, bits)
    w = w.detach().float()
    rows, cols = w.shape
    g = check_group(cols, group_size)
    flat = w.reshape(rows * (cols // g), g)
    scale, zero = grid_params(flat, bits, clip_search=clip_search)
    q = quantize(flat, scale[:, None], zero[:, None], 2**bits - 1).reshape(rows, cols)
    scale, zero = scale.reshape(rows, -1), zero.reshape(rows, -1)
    return Codes(q.to(torch.uint8), scale, zero.to(torch.uint8), dequantize_grouped(q, scale, zero))


def rtn_by_row(
    w: torch.Tensor,
    row_bits: torch.Tensor,
    *,
    group_size: int | None = None,
    clip_search: bool = True,
) -> Codes:
    """Round-to-nearest codes of ``w`` (out x in) where row ``r`` gets ``row_bits[r]`` bits."""
    w = w.detach().float()
    rows, cols = w.shape
    g = check_group(cols, group_size)
    qdata = torch.zeros(rows, cols, dtype=torch.uint8)
    scale = torch.zeros(rows, cols // g)
    zero = torch.zeros(rows, cols // g, dtype=torch.uint8)
    w_hat = torch.zeros_like(w)
    for b in sorted({int(v) for v in row_bits.tolist()}):
        pick = row_bits == b
        part = rtn(w[pick], bits=b, group_size=g, clip_search=clip_search)
        qdata[pick], scale[pick], zero[pick], w_hat[pick] = (
            part.qdata,
            part.scale,
            part.zero_point,
            part.w_hat,
        )
    return Codes(qdata, scale, zero, w_hat)


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``2 X^T X / n`` of calibration inputs ``x`` (n x in), in float64."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    return 2.0 * x.T @ x / max(x.shape[0], 1)


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared output error ``||x w^T - x w_hat^T||^2 / n`` on inputs ``x``."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    d = w.detach().double() - w_hat.detach().double()
    return float((x @ d.T).pow(2).sum() / max(x.shape[0], 1))


def weighted_error(h: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """The same output error from the Hessian alone: ``tr(dW H dW^T) / 2``."""
    d = (w.double() - w_hat.double()).to(h.device)
    return float(((d @ h.double()) * d).sum() / 2)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; the dampening grows
    tenfold until the matrix factors (a rank-deficient H from too few samples)."""
    mean_diag = float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(6):
        try:
            chol = torch.linalg.cholesky(h + damp * mean_diag * eye)
            hinv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(hinv, upper=True), damp
        except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
            damp *= 10
    raise ValueError("the Hessian stays singular even with heavy dampening")


def gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    clip_search: bool = True,
    grid: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    rate_weight: float = 0.0,
) -> Codes:
    """GPTQ codes of ``w`` (out x in) given the Hessian ``h`` (in x in) of its inputs.

    Args:
        bits: code width (2-8).
        group_size: inputs per scale/zero point (``None``: one per row). A group's grid is
            fitted when its first column is reached, on the weights as updated so far.
        act_order: quantize columns in order of decreasing Hessian diagonal (inputs with the
            largest activations first), then undo the permutation.
        damp: ``damp * mean(diag H)`` is added to the diagonal before inverting (raised
            tenfold while the matrix does not factor, e.g. fewer samples than inputs).
        block_size: columns per block; updates to later columns are applied once per block.
        grid: a fixed grid instead of fitted ones: per-row ``(scale, zero_point, qmax)``
            with codes in ``[0, qmax]`` (one group per row). Symmetric int8 per channel is
            ``(absmax / 127, 127, 254)``: the codes minus 127 are the signed int8 values.
        rate_weight: rate-aware rounding (``code_lengths``): each weight takes the grid point
            below or above it that minimises ``(position - code)^2 + rate_weight * length``,
            the squared distance in grid steps plus the code's length in bits under the
            distribution of the matrix's round-to-nearest codes. A near-tie then goes to the
            more frequent code, so the entropy-coded file shrinks, and the update spreads
            the extra error over the later columns like any rounding error. 0: nearest.
    """
    _check(w, bits)
    if grid is not None and group_size not in (None, w.shape[1]):
        raise ValueError("a fixed grid has one scale per row: group_size must be None")
    if not 0.0 <= rate_weight <= 10.0:
        raise ValueError(f"rate_weight must lie in [0, 10], got {rate_weight!r}")
    if rate_weight and grid is not None:
        raise ValueError("rate_weight needs fitted grids (it models their centered codes)")
    if h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"Hessian shape {tuple(h.shape)} does not fit weight {tuple(w.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("the Hessian holds NaN or inf values")
    rows, cols = w.shape
    g = check_group(cols, group_size)
    qmax = 2**bits - 1 if grid is None else grid[2]
    W = w.detach().double().clone()
    H = h.detach().double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0  # inputs never seen: no information, plain rounding for them
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    U, used = _inverse_cholesky(H, damp)
    n_groups = cols // g
    scale = torch.zeros(rows, n_groups)
    zero = torch.zeros(rows, n_groups)
    done = torch.zeros(n_groups, dtype=torch.bool)
    if grid is not None:
        scale[:, 0], zero[:, 0], done[0] = grid[0].float(), grid[1], True
    group_of = perm // g
    lengths = (
        rate_weight * code_lengths(rtn(w, bits=bits, group_size=g, clip_search=clip_search), bits)
        if rate_weight
        else None
    )
    Q = torch.zeros(rows, cols)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2]  # a view: in-block updates land in W
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            gi = int(group_of[i1 + i])
            if not done[gi]:  # fit the group's grid on its current (updated) weights
                members = (group_of == gi).nonzero().squeeze(1)
                s, z = grid_params(W[:, members].float(), bits, clip_search=clip_search)
                scale[:, gi], zero[:, gi], done[gi] = s, z, True
            col = W1[:, i].float()
            s, z = scale[:, gi], zero[:, gi]
            q = (
                quantize(col, s, z, qmax)
                if lengths is None
                else _rate_round(col / s + z, z, qmax, lengths)
            )
            Q[:, i1 + i] = q
            err = (col.double() - dequantize(q, s, z).double()) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    inv = torch.argsort(perm)
    Q = Q[:, inv]
    return Codes(
        Q.to(torch.uint8),
        scale,
        zero.to(torch.uint8),
        dequantize_grouped(Q, scale, zero),
        damp=used,
    )


def code_lengths(codes: Codes, bits: int) -> torch.Tensor:
    """Length in bits of each centered code ``(q - zero_point) mod 2^bits`` (the symbols the
    file's entropy coder sees, ``nn.lowbit.center``) under the codes' own frequencies, counts
    smoothed by 1/2 so that an unseen code has a finite length."""
    m = 2**bits
    zero = codes.zero_point.long().repeat_interleave(
        codes.qdata.shape[1] // codes.scale.shape[1], 1
    )
    centered = (codes.qdata.long() - zero) % m
    counts = torch.bincount(centered.flatten(), minlength=m).double() + 0.5
    return (-torch.log2(counts / counts.sum())).float()


def _rate_round(
    pos: torch.Tensor, zero: torch.Tensor, qmax: int, lengths: torch.Tensor
) -> torch.Tensor:
    """The grid point below or above ``pos`` (a position in grid steps) of least
    ``distance^2 + length``; ``lengths`` is already scaled by the rate weight."""
    lo = torch.floor(pos).clamp(0, qmax)
    hi = (lo + 1).clamp(max=qmax)
    m = len(lengths)

    def cost(q: torch.Tensor) -> torch.Tensor:
        return (pos - q).pow(2) + lengths[(q - zero).long() % m]

    return torch.where(cost(hi) < cost(lo), hi, lo)


def awq_scales(
    w: torch.Tensor,
    h: torch.Tensor,
    act_mean: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    grid: int = 11,
) -> tuple[torch.Tensor, float]:
    """AWQ-style per-input-channel scales ``s = mean|x|^alpha`` (normalised), searched over
    ``alpha`` in [0, 1] to minimise the Hessian-weighted output error of rounding ``w * s``.

    Returns (fp16-exact scales, alpha); ``alpha = 0`` (all ones) when scaling never helps.
    The quantized weight is then ``Q(w * s) / s``."""
    base = act_mean.detach().float().clamp_min(1e-8)
    best = (torch.ones_like(base), 0.0, math.inf)
    for k in range(grid):
        alpha = k / (grid - 1)
        s = base.pow(alpha)
        s = (s / (s.max() * s.min()).sqrt()).clamp(2.0**-8, 2.0**8).half().float()
        codes = rtn(w.float() * s, bits=bits, group_size=group_size)
        err = weighted_error(h, w, codes.w_hat / s)
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1]
