"""Choose, per Linear layer, how its activations go to int8, from calibration data.

For every candidate layer the calibration batches are run once to record each input
feature's largest magnitude and the input's range, then once more, comparing the float
output ``x W^T + b`` with

- ``static``: uint8 input on one calibrated min/max grid (per tensor) and per-channel int8
  weights (what ``QuantLinear`` computes), and
- ``dynamic`` with each SmoothQuant strength ``alpha`` in ``ALPHAS`` (0 = no smoothing):
  per-row symmetric int8 input after dividing by ``smooth_factors`` and int8 weights of the
  smoothed matrix (what ``DynQuantLinear`` computes).

The error is measured as output SQNR in dB over all rows seen (at most ``MAX_ROWS`` rows per
batch, evenly spaced). Inputs of any rank are flattened to rows of the last dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.nn.dynamic import quantize_rows, smooth_factors

__all__ = ["ALPHAS", "LinearPlan", "decide", "measure", "smooth_factors"]
from modelzip.quant.calibrate import _hooks, _run

ALPHAS = (0.0, 0.5, 0.75)
MAX_ROWS = 512


@dataclass
class LinearPlan:
    """What calibration measured for one layer; ``choice`` is set by ``decide``."""

    absmax: torch.Tensor | None = None
    lo: float = math.inf
    hi: float = -math.inf
    signal: float = 0.0
    noise_static: float = 0.0
    noise_dynamic: dict[float, float] = field(default_factory=dict)
    choice: str = ""
    alpha: float = 0.0
    reason: str = ""

    def sqnr(self, noise: float) -> float:
        """Output SQNR in dB for an accumulated noise energy."""
        if noise <= 0:
            return 99.0
        return 10 * math.log10(max(self.signal, 1e-30) / noise)

    @property
    def sqnr_static(self) -> float:
        return self.sqnr(self.noise_static)

    def best_dynamic(self) -> tuple[float, float]:
        """(alpha, SQNR dB) of the best smoothing strength."""
        alpha = min(self.noise_dynamic, key=lambda a: self.noise_dynamic[a])
        return alpha, self.sqnr(self.noise_dynamic[alpha])


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    if x2.shape[0] > MAX_ROWS:
        x2 = x2[torch.linspace(0, x2.shape[0] - 1, MAX_ROWS).long()]
    return x2


def _fake_rows(w: torch.Tensor) -> torch.Tensor:
    codes, scale = quantize_rows(w)
    return codes.float() * scale


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
) -> dict[str, LinearPlan]:
    """Two calibration passes: input statistics, then each mode's output error."""
    plans = {n: LinearPlan() for n in layers}

    def stats(name: str, _m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        p, x2 = plans[name], x.detach().reshape(-1, x.shape[-1]).float()
        amax = x2.abs().amax(dim=0)
        p.absmax = amax if p.absmax is None else torch.maximum(p.absmax, amax)
        p.lo, p.hi = min(p.lo, float(x2.min())), max(p.hi, float(x2.max()))

    with _hooks(dict(layers), stats):
        _run(model, batches)
    smooth = {
        n: {
            a: smooth_factors(plans[n].absmax, m.weight, a)  # type: ignore[arg-type]  # pass 1
            for a in alphas
        }
        for n, m in layers.items()
        if plans[n].absmax is not None
    }
    w_static = {n: _fake_rows(m.weight.detach().float()) for n, m in layers.items()}
    w_dyn = {
        n: {a: _fake_rows(layers[n].weight.detach().float() * s[None, :]) for a, s in d.items()}
        for n, d in smooth.items()
    }

    def errors(name: str, m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        p, x2 = plans[name], _rows(x)
        lin = cast(nn.Linear, m)
        bias = lin.bias
        ref = F.linear(x2, lin.weight.float(), bias)
        p.signal += float(ref.pow(2).sum())
        out = F.linear(_static_input(x2, p.lo, p.hi), w_static[name], bias)
        p.noise_static += float((out - ref).pow(2).sum())
        for a, s in smooth[name].items():
            out = F.linear(_fake_rows(x2 / s), w_dyn[name][a], bias)
            p.noise_dynamic[a] = p.noise_dynamic.get(a, 0.0) + float((out - ref).pow(2).sum())

    with _hooks({n: layers[n] for n in smooth}, errors):
        _run(model, batches)
    return plans


def decide(
    plans: dict[str, LinearPlan], *, allow_static: bool, margin_db: float, min_sqnr_db: float
) -> None:
    """Static where it is within ``margin_db`` of the best dynamic SQNR (cheaper, chains),
    else dynamic with the best alpha; float when even that is below ``min_sqnr_db``."""
    for p in plans.values():
        if not p.noise_dynamic:
            p.choice, p.reason = "float", "never ran on the calibration data"
            continue
        p.alpha, best = p.best_dynamic()
        if allow_static and p.sqnr_static >= best - margin_db and p.sqnr_static >= min_sqnr_db:
            p.choice = "static"
        elif best >= min_sqnr_db:
            p.choice = "dynamic"
        else:
            p.choice = "float"
            p.reason = (
                f"int8 output SQNR {best:.1f} dB on calibration data is below min_sqnr_db "
                f"{min_sqnr_db:g}: kept in float"
            )
