"""Plumbing of dynamic per-token activations: plan each Linear, replace it, report why.

The measurements and the rule live in ``modelzip.quant.plan``; the layer in
``modelzip.nn.dynamic``. Layers planned ``static`` are left for the static path (calibrated
``QuantLinear``), layers planned ``float`` keep their float weights and the notes say why.
"""

from __future__ import annotations

from typing import Any, cast

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
    rounding: str = "nearest",
    asymmetric: bool = False,
    rows16_share: float = 0.0,
    share_rows: bool = False,
    rotate: int = 0,
) -> tuple[nn.Module, dict[str, nn.Module], dict[str, Any]]:
    """Returns (model, layers left for the static path, per-layer notes + ``_kept_float``)."""
    linears = {
        n: m
        for n, m in chosen.items()
        if type(m) is nn.Linear and bits[n] in (7, 8) and not parametrize.is_parametrized(m)
    }
    alphas = plan.ALPHAS if smoothquant else (0.0,)
    plans = plan.measure(
        model,
        linears,
        batches,
        alphas=alphas,
        rounding=rounding,
        asymmetric=asymmetric,
        share_rows=share_rows,
        rotate=rotate,
        weight_bits={n: bits[n] for n in linears},
    )
    plan.decide(
        plans,
        allow_static=mode == "auto",
        margin_db=margin_db,
        min_sqnr_db=min_sqnr_db,
    )
    notes: dict[str, Any] = {}
    kept: dict[str, str] = {}
    rest = dict(chosen)
    built: dict[str, tuple[nn.Module, DynQuantLinear]] = {}
    for name, p in plans.items():
        info: dict[str, Any] = {"mode": p.choice}
        if p.noise_dynamic:
            alpha, best = p.best_dynamic(asymmetric=p.asymmetric)
            info.update(
                sqnr_static_db=round(p.sqnr_static, 2),
                sqnr_dynamic_db=round(best, 2),
                smooth_alpha=alpha,
            )
            if p.noise_asym:
                info["sqnr_symmetric_db"] = round(p.best_dynamic()[1], 2)
        notes[name] = info
        if p.choice == "static":
            continue
        del rest[name]
        if p.choice == "float":
            kept[name] = p.reason
            continue
        layer = linears[name]
        smooth = p.smooth[p.alpha] if p.alpha > 0 else None  # a group's is one for all
        codes, scale, how = p.codes[p.alpha]
        new = DynQuantLinear.from_float(
            layer.weight,
            layer.bias,
            smooth,
            codes=(codes, scale),
            asymmetric=p.asymmetric,
            rotate=p.rotate,
        )
        convert.replace(model, name, new)
        built[name] = (layer, new)
        info.update(
            bits=bits[name],
            granularity="channel",
            int8_kernel=True,
            act_mode="dynamic per-token " + ("asymmetric" if p.asymmetric else "symmetric"),
            weight_rounding=how,
        )
        if p.rotate:
            info["rotate"] = p.rotate
        if len(p.group) > 1:
            info["rows_shared_with"] = [n for n in p.group if n != name]
    if rows16_share > 0 and built and batches:
        damage = end_to_end_damage(model, built, batches[0])
        wide_layers = promote(damage, rows16_share)
        for name, share in wide_layers.items():
            # 16-bit rows need no smoothing, and unsmoothed weights round better
            codes, scale, _ = plans[name].codes[0.0]
            float_layer = cast(nn.Linear, built[name][0])
            wide = DynQuantLinear.from_float(
                float_layer.weight,
                float_layer.bias,
                codes=(codes, scale),
                act_bits=16,
                rotate=plans[name].rotate,
            )
            convert.replace(model, name, wide)
            notes[name].update(
                act_mode="dynamic per-token 16-bit (two int8 passes)",
                smooth_alpha=0.0,
                error_share=round(share, 4),
            )
        if damage:
            notes["_rows16"] = {
                "share_target": rows16_share,
                "layers": sorted(wide_layers),
            }
    notes["_kept_float"] = kept
    return model, rest, notes


def end_to_end_damage(
    model: nn.Module, built: dict[str, tuple[nn.Module, DynQuantLinear]], batch: torch.Tensor
) -> dict[str, float]:
    """Each dynamic layer's own share of the model's output error: the squared output error
    with only that layer in int8 (the others float), on one calibration batch (at most 32
    samples). Per-layer SQNR does not rank layers by what they cost the model: on MiniLM the
    FFN's second matrices have ordinary SQNR yet cause half the embedding error."""
    x = batch[:32]
    with torch.no_grad():
        for name, (float_layer, _) in built.items():
            convert.replace(model, name, float_layer)
        ref = model.eval()(x)
        if not isinstance(ref, torch.Tensor):
            for name, (_, q) in built.items():
                convert.replace(model, name, q)
            return {}
        out: dict[str, float] = {}
        for name, (float_layer, q) in built.items():
            convert.replace(model, name, q)
            out[name] = float((model(x).float() - ref.float()).pow(2).sum())
            convert.replace(model, name, float_layer)
        for name, (_, q) in built.items():
            convert.replace(model, name, q)
    total = sum(out.values())
    return {n: v / total for n, v in out.items()} if total > 0 else {}


def promote(damage: dict[str, float], share: float) -> dict[str, float]:
    """The most damaging layers, largest first, until they hold ``share`` of the error."""
    picked: dict[str, float] = {}
    acc = 0.0
    for name, d in sorted(damage.items(), key=lambda kv: -kv[1]):
        if acc >= share:
            break
        picked[name] = d
        acc += d
    return picked
