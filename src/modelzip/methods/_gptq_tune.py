"""Post-GPTQ reconstruction for ``gptq`` (``tune_scales: N``): codes frozen, the rest tuned.

GPTQ fixes each layer's integer codes from that layer's own output error; what it cannot see
is how the layers' errors add up through the model. With the codes fixed, a few continuous
parameters can still move: each group's scale (through a multiplier per row and group, so
one learning rate fits layers whose scales differ by orders of magnitude), the biases of the
quantized layers and the affine parameters of the normalisation layers. ``tune`` runs Adam on
them for ``steps`` steps so the quantized model's outputs on the calibration batches match the
float model's (relative squared error), the idea of OmniQuant's and EfficientQAT's "train
the quantization parameters, keep the codes" phase, end to end on the whole model.

The tuned scales are rounded to their stored format (fp16, or the 8-bit log grid of
``scale_bits: 8``), and the result is kept only when the calibration error, measured after
that rounding, went down; otherwise every parameter is put back. The embedding tables'
scales are tuned too, but only the rows the calibration data looks up receive a gradient
(and moment): rows never seen keep their GPTQ/round-to-nearest scales.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from modelzip.nn.constraints import constraints_of
from modelzip.nn.lowbit import GroupCodes

#: Normalisation layers whose affine parameters are tuned.
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, _BatchNorm)


def reference_outputs(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """The float model's outputs on ``batches`` (None when an output is not one tensor)."""
    refs = []
    with torch.no_grad():
        for x in batches:
            y = model.eval()(x)
            if not isinstance(y, torch.Tensor) or not y.is_floating_point():
                return None
            refs.append(y.detach().float())
    return refs


def group_codes(model: nn.Module) -> list[tuple[nn.Module, GroupCodes]]:
    out = []
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight"):
            for c in constraints_of(mod, "weight"):
                if isinstance(c, GroupCodes):
                    out.append((mod, c))
    return out


def _extra_parameters(model: nn.Module, layers: list[nn.Module]) -> list[nn.Parameter]:
    """Biases of the quantized layers and affine parameters of the normalisation layers."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []

    def add(p: Any) -> None:
        if isinstance(p, nn.Parameter) and p.is_floating_point() and id(p) not in seen:
            seen.add(id(p))
            out.append(p)

    for layer in layers:
        add(getattr(layer, "bias", None))
    for mod in model.modules():
        if isinstance(mod, NORM_LAYERS):
            add(getattr(mod, "weight", None))
            add(getattr(mod, "bias", None))
    return out


def output_error(model: nn.Module, batches: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    """Squared output error relative to the reference outputs' energy, over all batches."""
    err = sig = 0.0
    with torch.no_grad():
        for x, ref in zip(batches, refs, strict=True):
            err += float((model(x).float() - ref).pow(2).sum())
            sig += float(ref.pow(2).sum())
    return err / sig if sig > 0 else 0.0


def tune(
    model: nn.Module,
    batches: list[torch.Tensor],
    refs: list[torch.Tensor],
    *,
    steps: int,
    lr: float,
    schedule: str = "constant",
) -> dict[str, Any]:
    """Tune ``model``'s group scales, quantized layers' biases and norm parameters in place
    (codes fixed) for ``steps`` Adam steps, one calibration batch a step; returns the notes.
    ``schedule="cosine"`` decays the learning rate from ``lr`` to 0 along a half cosine (the
    last steps make small moves, so the result sits nearer a minimum than constant-rate
    steps leave it); ``"constant"`` keeps ``lr`` throughout.

    Example:
        >>> refs = reference_outputs(float_model, batches)  # before quantizing
        >>> notes = tune(quantized, batches, refs, steps=100, lr=1e-3)
        >>> notes["error_after"] <= notes["error_before"]
        True
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    pairs = group_codes(model)
    if not pairs or steps <= 0:
        return {"steps": 0, "why_not": "no group codes to tune" if not pairs else "0 steps"}
    model.eval()  # dropout off, BatchNorm statistics frozen: only the parameters move
    base = [c.scale.detach().clone() for _, c in pairs]
    mult = [torch.ones_like(s, requires_grad=True) for s in base]
    extra = _extra_parameters(model, [m for m, _ in pairs])
    saved = [p.detach().clone() for p in extra]
    grad_was = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in extra:
        p.requires_grad_(True)
    before = output_error(model, batches, refs)
    opt = torch.optim.Adam(
        [{"params": mult, "lr": lr}, {"params": extra, "lr": lr * 0.1}], betas=(0.9, 0.99)
    )
    decay = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        if schedule == "cosine"
        else None
    )
    losses: list[float] = []
    try:
        for step in range(steps):
            x, ref = batches[step % len(batches)], refs[step % len(batches)]
            for (_, c), s0, m in zip(pairs, base, mult, strict=True):
                c.scale = s0 * m
            out = model(x).float()
            loss = (out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            losses.append(float(loss.detach()))
    finally:
        with torch.no_grad():
            for (_, c), s0, m in zip(pairs, base, mult, strict=True):
                c.set_scale(s0 * m)  # rounded to the stored format (fp16 or 8-bit log codes)
        for p in model.parameters():
            p.requires_grad_(grad_was.get(id(p), False))
    after = output_error(model, batches, refs)
    kept = after < before
    if not kept:  # never leave the model worse than GPTQ left it
        with torch.no_grad():
            for (_, c), s0 in zip(pairs, base, strict=True):
                c.set_scale(s0)  # s0 is already on the stored grid: unchanged
            for p, v in zip(extra, saved, strict=True):
                p.copy_(v)
    moved = [float((m.detach() - 1).abs().mean()) for m in mult]
    return {
        "steps": steps,
        "lr": lr,
        "schedule": schedule,
        "error_before": float(f"{before:.4g}"),
        "error_after": float(f"{after:.4g}") if kept else float(f"{before:.4g}"),
        "kept": kept,
        "group_scales": sum(s.numel() for s in base),
        "other_parameters": sum(p.numel() for p in extra),
        "mean_scale_change": float(f"{sum(moved) / len(moved):.3g}"),
        "first_loss": float(f"{losses[0]:.4g}"),
        "last_loss": float(f"{losses[-1]:.4g}"),
    }
