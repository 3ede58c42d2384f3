"""Plumbing of dynamic per-token activations: plan each Linear, replace it, report why.

The measurements and the rule live in ``modelzip.quant.plan``; the layer in
``modelzip.nn.dynamic``. Layers planned ``static`` are left for the static path (calibrated
``QuantLinear``), layers planned ``float`` keep their float weights and the notes say why.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.nn.dynamic import DynQuantLinear
from modelzip.quant import convert, plan


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def apply(
    model: nn.Module,
    chosen: dict[str, nn.Module],
    bits: dict[str, int],
    batches: list[torch.Tensor],
    *,
    mode: str,
    smoothquant: bool,
    min_sqnr_db: float,
    margin_db: float,
) -> tuple[nn.Module, dict[str, nn.Module], dict[str, Any]]:
    """Returns (model, layers left for the static path, per-layer notes + ``_kept_float``)."""
    linears = {
        n: m
        for n, m in chosen.items()
        if type(m) is nn.Linear and bits[n] == 8 and not parametrize.is_parametrized(m)
    }
    alphas = plan.ALPHAS if smoothquant else (0.0,)
    plans = plan.measure(model, linears, batches, alphas=alphas)
    plan.decide(
        plans,
        allow_static=mode == "auto",
        margin_db=margin_db,
        min_sqnr_db=min_sqnr_db,
    )
    notes: dict[str, Any] = {}
    kept: dict[str, str] = {}
    rest = dict(chosen)
    for name, p in plans.items():
        info: dict[str, Any] = {"mode": p.choice}
        if p.noise_dynamic:
            alpha, best = p.best_dynamic()
            info.update(
                sqnr_static_db=round(p.sqnr_static, 2),
                sqnr_dynamic_db=round(best, 2),
                smooth_alpha=alpha,
            )
        notes[name] = info
        if p.choice == "static":
            continue
        del rest[name]
        if p.choice == "float":
            kept[name] = p.reason
            continue
        layer = linears[name]
        smooth = None
        if p.alpha > 0 and p.absmax is not None:
            smooth = plan.smooth_factors(p.absmax, layer.weight, p.alpha)
        new = DynQuantLinear.from_float(layer.weight, layer.bias, smooth)
        convert.replace(model, name, new)
        info.update(bits=8, granularity="channel", int8_kernel=True, act_mode="dynamic per-token")
    notes["_kept_float"] = kept
    return model, rest, notes
