"""Choose, per Linear layer, how its activations go to int8, from calibration data.

For every candidate layer the calibration batches are run once to record each input
feature's largest magnitude and the input's range, then once more, comparing the float
output ``x W^T + b`` with

- ``static``: uint8 input on one calibrated min/max grid (per tensor) and per-channel int8
  weights (what ``QuantLinear`` computes), and
- ``dynamic`` with each SmoothQuant strength ``alpha`` in ``ALPHAS`` (0 = no smoothing):
  per-row symmetric int8 input after dividing by ``smooth_factors`` and int8 weights of the
  smoothed matrix (what ``DynQuantLinear`` computes).

Layers that read the same input tensor one after another (a transformer's query, key and value)
are planned as one group: one SmoothQuant vector from all their weights (as SmoothQuant folds
one vector into the LayerNorm before them), and one row kind, chosen on the group's summed
relative error, so that at run time they quantize the input once (``DynQuantLinear`` shares
the codes of an input between such layers).

With ``rotate=b`` every dynamic candidate has its (smoothed) input rotated by a block Hadamard
matrix (``modelzip.nn.rotation``, blocks of the largest power of two up to ``b`` that divides
the layer's inputs) and its weight columns alike, before both are quantized: the codes, the
GPTQ Hessian and the measured error are those of the rotated layer.

The error is measured as output SQNR in dB over all rows seen (at most ``MAX_ROWS`` rows per
batch, evenly spaced). Inputs of any rank are flattened to rows of the last dimension.

With ``rounding="gptq"`` the first pass also accumulates each layer's input Gram matrix, and the
int8 weights of every dynamic candidate are rounded by GPTQ on their fixed symmetric per-channel
grid from the Hessian of the (smoothed) inputs, instead of to nearest. Why: SmoothQuant moves
activation outliers into the weights, and on MiniLM the rounding error of the smoothed weights
then costs as much output SQNR as the activations' (measured 3-8 dB per layer); GPTQ spreads
each column's rounding error over the columns not yet rounded, so the output error of the
weights nearly vanishes at 8 bits. The second pass measures the error of these codes.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.nn import rotation
from modelzip.nn.dynamic import fake_rows, smooth_factors
from modelzip.ops import gptq as ops_gptq

__all__ = [
    "ALPHAS",
    "ASYM_GAIN_DB",
    "LinearPlan",
    "decide",
    "int8_codes",
    "measure",
    "smooth_factors",
]
from modelzip.quant.calibrate import _hooks, _run

ALPHAS = (0.0, 0.5, 0.75)
#: Asymmetric rows cost a zero point per row and a correction per output; worth it from here.
ASYM_GAIN_DB = 0.5
MAX_ROWS = 512


@dataclass
class LinearPlan:
    """What calibration measured for one layer; ``choice`` is set by ``decide``."""

    absmax: torch.Tensor | None = None
    lo: float = math.inf
    hi: float = -math.inf
    signal: float = 0.0
    noise_static: float = 0.0
    noise_dynamic: dict[float, float] = field(default_factory=dict)  # symmetric rows, by alpha
    noise_asym: dict[float, float] = field(default_factory=dict)  # asymmetric rows, by alpha
    #: symmetric rows with nearest-rounded weights, by alpha (when the codes are GPTQ's): what
    #: static layers, whose weights are rounded to nearest, are compared with
    noise_nearest: dict[float, float] = field(default_factory=dict)
    choice: str = ""
    alpha: float = 0.0
    asymmetric: bool = False
    reason: str = ""
    gram: torch.Tensor | None = None  # sum of x^T x over calibration rows (float64)
    rows: int = 0
    #: alpha -> (int8 codes [out, in], scales [out], how they were rounded), per candidate
    codes: dict[float, tuple[torch.Tensor, torch.Tensor, str]] = field(default_factory=dict)
    #: the layers (this one included) that read the same input one after another
    group: tuple[str, ...] = ()
    #: alpha -> the SmoothQuant divisor per input feature (the group's, for a group)
    smooth: dict[float, torch.Tensor] = field(default_factory=dict)
    #: the Hadamard block the dynamic candidates' inputs are rotated by (0: none)
    rotate: int = 0

    def sqnr(self, noise: float) -> float:
        """Output SQNR in dB for an accumulated noise energy."""
        if noise <= 0:
            return 99.0
        return 10 * math.log10(max(self.signal, 1e-30) / noise)

    @property
    def sqnr_static(self) -> float:
        return self.sqnr(self.noise_static)

    def best_dynamic(self, asymmetric: bool = False) -> tuple[float, float]:
        """(alpha, SQNR dB) of the best smoothing strength, for symmetric or asymmetric rows."""
        noise = self.noise_asym if asymmetric else self.noise_dynamic
        alpha = min(noise, key=lambda a: noise[a])
        return alpha, self.sqnr(noise[alpha])


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    if x2.shape[0] > MAX_ROWS:
        x2 = x2[torch.linspace(0, x2.shape[0] - 1, MAX_ROWS).long()]
    return x2


def int8_codes(
    w: torch.Tensor, gram: torch.Tensor | None = None, rows: int = 0, *, bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Symmetric per-row codes of ``w`` (``[out, in]``) in int8 storage, their scales
    ``max|w_row| / qmax`` (``qmax`` 127 for ``bits`` 8, 63 for 7) and ``"gptq"`` or
    ``"nearest"``: by GPTQ from ``gram`` (the sum of ``x^T x`` over ``rows`` input rows) when
    there are at least as many rows as inputs, else rounded to nearest."""
    if bits not in (7, 8):
        raise ValueError(f"int8 kernel weights take 7 or 8 bits, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / qmax
    if gram is None or rows < w.shape[1]:
        return torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8), scale, "nearest"
    zero = torch.full_like(scale, float(qmax))
    res = ops_gptq.gptq(
        w,
        2.0 * gram / rows,
        bits=bits,
        act_order=True,
        grid=(scale, zero, 2 * qmax),
        clip_search=False,
    )
    return (res.qdata.to(torch.int16) - qmax).to(torch.int8), scale, "gptq"


def _static_input(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zp = int(round(-lo / scale))
    return torch.fake_quantize_per_tensor_affine(x, scale, min(max(zp, 0), 255), 0, 255)


def measure(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    batches: list[torch.Tensor],
    *,
    alphas: tuple[float, ...] = ALPHAS,
    rounding: str = "nearest",
    asymmetric: bool = False,
    share_rows: bool = False,
    rotate: int = 0,
    weight_bits: dict[str, int] | None = None,
) -> dict[str, LinearPlan]:
    """Two calibration passes: input statistics, then each mode's output error; with
    ``share_rows``, layers reading one input in a row are planned as a group; with ``rotate``,
    the dynamic candidates are Hadamard-rotated in blocks of up to that size; ``weight_bits``
    gives layers 7-bit weight grids (default 8: ``int8_codes``)."""
    plans = {
        n: LinearPlan(rotate=rotation.block_for(m.in_features, rotate)) for n, m in layers.items()
    }
    groups: list[list[str]] = []
    last: list[Callable[[], object] | None] = [None]

    def stats(name: str, _m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        if not any(name in grp for grp in groups):  # first call: the same input as the last?
            prev = last[0]
            if prev is not None and prev() is x:
                groups[-1].append(name)
            else:
                groups.append([name])
        last[0] = weakref.ref(x)
        p, x2 = plans[name], x.detach().reshape(-1, x.shape[-1]).float()
        amax = x2.abs().amax(dim=0)
        p.absmax = amax if p.absmax is None else torch.maximum(p.absmax, amax)
        p.lo, p.hi = min(p.lo, float(x2.min())), max(p.hi, float(x2.max()))
        if rounding == "gptq":
            g = (x2.T @ x2).double()  # float32 product: the float64 one costs 3x more
            p.gram = g if p.gram is None else p.gram + g
            p.rows += x2.shape[0]

    with _hooks(dict(layers), stats):
        _run(model, batches)
    for grp in groups if share_rows else []:
        for n in grp:
            plans[n].group = tuple(grp)

    def joint_weight(n: str) -> torch.Tensor:  # a group's weights, stacked
        return torch.cat([layers[m].weight.detach() for m in plans[n].group or (n,)])

    smooth = {
        n: {
            a: (
                torch.ones(m.weight.shape[1])
                if a == 0  # alpha 0 is "no smoothing", as DynQuantLinear is then built
                else smooth_factors(plans[n].absmax, joint_weight(n), a)  # type: ignore[arg-type]
            )
            for a in alphas
        }
        for n, m in layers.items()
        if plans[n].absmax is not None
    }
    for n, by_alpha in smooth.items():
        plans[n].smooth = by_alpha

    def nearest(w: torch.Tensor, name: str) -> torch.Tensor:  # the grid's values, rounded
        codes, scale, _ = int8_codes(w, bits=(weight_bits or {}).get(name, 8))
        return codes.float() * scale[:, None]

    w_static = {n: nearest(m.weight.detach().float(), n) for n, m in layers.items()}
    w_dyn: dict[str, dict[float, torch.Tensor]] = {}
    w_near: dict[str, dict[float, torch.Tensor]] = {}
    for n, by_alpha in smooth.items():
        p, w_dyn[n], w_near[n] = plans[n], {}, {}
        for a, s in by_alpha.items():
            gram = None
            if p.gram is not None:
                s64 = s.double()
                # the Gram matrix of the layer's quantized input, rotate(x / s)
                gram = rotation.rotate_gram(p.gram / (s64[:, None] * s64[None, :]), p.rotate)
            w = rotation.rotate(layers[n].weight.float() * s[None, :], p.rotate)
            bits = (weight_bits or {}).get(n, 8)
            codes, scale, how = int8_codes(w, gram, p.rows, bits=bits)
            p.codes[a] = (codes, scale, how)
            w_dyn[n][a] = codes.float() * scale[:, None]
            if how == "gptq":
                w_near[n][a] = nearest(w, n)
        p.gram = None  # up to 18 MB per layer: not kept past its use

    def errors(name: str, m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        p, x2 = plans[name], _rows(x)
        lin = cast(nn.Linear, m)
        bias = lin.bias
        ref = F.linear(x2, lin.weight.float(), bias)
        p.signal += float(ref.pow(2).sum())
        out = F.linear(_static_input(x2, p.lo, p.hi), w_static[name], bias)
        p.noise_static += float((out - ref).pow(2).sum())
        for a, s in smooth[name].items():
            xr = rotation.rotate(x2 / s, p.rotate)
            out = F.linear(fake_rows(xr), w_dyn[name][a], bias)
            p.noise_dynamic[a] = p.noise_dynamic.get(a, 0.0) + float((out - ref).pow(2).sum())
            if a in w_near[name]:
                out = F.linear(fake_rows(xr), w_near[name][a], bias)
                p.noise_nearest[a] = p.noise_nearest.get(a, 0.0) + float((out - ref).pow(2).sum())
            if asymmetric:
                out = F.linear(fake_rows(xr, asymmetric=True), w_dyn[name][a], bias)
                p.noise_asym[a] = p.noise_asym.get(a, 0.0) + float((out - ref).pow(2).sum())

    with _hooks({n: layers[n] for n in smooth}, errors):
        _run(model, batches)
    return plans


def _joint_best(members: list[LinearPlan], asymmetric: bool) -> tuple[float, float]:
    """(alpha, SQNR dB) minimising the group's summed relative error (one layer: its own)."""

    def rel(a: float) -> float:
        return sum(
            (m.noise_asym if asymmetric else m.noise_dynamic)[a] / max(m.signal, 1e-30)
            for m in members
        ) / len(members)

    alpha = min(members[0].noise_dynamic, key=rel)
    err = rel(alpha)
    return alpha, 99.0 if err <= 0 else -10 * math.log10(err)


def decide(
    plans: dict[str, LinearPlan],
    *,
    allow_static: bool,
    margin_db: float,
    min_sqnr_db: float,
    asym_gain_db: float = ASYM_GAIN_DB,
) -> None:
    """Static where it is within ``margin_db`` of the best dynamic SQNR (cheaper, chains),
    else dynamic with the best alpha, asymmetric rows where they gain at least ``asym_gain_db``
    over symmetric ones (measured); float when even that is below ``min_sqnr_db``."""
    for p in plans.values():
        if not p.noise_dynamic:
            p.choice, p.reason = "float", "never ran on the calibration data"
            continue
        members = [plans[n] for n in p.group if plans[n].noise_dynamic] or [p]
        p.alpha, best = _joint_best(members, asymmetric=False)
        # static against dynamic rows on the same (nearest) weight rounding: GPTQ's gain is
        # not what decides whether a layer's input needs per-token scales
        like_static = p.sqnr(min(p.noise_nearest.values())) if p.noise_nearest else best
        if p.noise_asym:
            alpha, best_asym = _joint_best(members, asymmetric=True)
            if best_asym >= best + asym_gain_db:
                p.alpha, p.asymmetric = alpha, True
        best = p.sqnr((p.noise_asym if p.asymmetric else p.noise_dynamic)[p.alpha])
        if (
            allow_static
            and p.sqnr_static >= like_static - margin_db
            and p.sqnr_static >= min_sqnr_db
        ):
            p.choice = "static"
        elif best >= min_sqnr_db:
            p.choice = "dynamic"
        else:
            p.choice = "float"
            p.reason = (
                f"int8 output SQNR {best:.1f} dB on calibration data is below min_sqnr_db "
                f"{min_sqnr_db:g}: kept in float"
            )
