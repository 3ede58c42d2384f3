"""``prune``: zero out weights by importance; the mask is kept on the module during training."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.nn.constraints import Mask, constrain
from modelzip.registry import register
from modelzip.targets import per_layer, select


class PruneConfig(MethodConfig):
    """Options of a pruning stage.

    Example (YAML): ``{method: prune, sparsity: 0.9, scope: global}`` or per layer
    ``{method: prune, sparsity: {default: 0.9, fc3: 0.5}}``.
    """

    method: ClassVar[str] = "prune"
    sparsity: float | dict[str, float] = 0.9
    scope: Literal["layer", "global"] = "global"
    criterion: Literal["magnitude"] = "magnitude"
    pattern: Literal["unstructured"] = "unstructured"
    layers: list[str] | None = Field(None, description="layer patterns to prune (default: all)")

    @field_validator("sparsity")
    @classmethod
    def _in_range(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        for s in values:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {s}")
        return v


def magnitude_masks(
    weights: dict[str, torch.Tensor], sparsity: dict[str, float], scope: str
) -> dict[str, torch.Tensor]:
    """Keep-masks that drop the smallest |w|: one threshold per layer, or one across all.

    With ``scope == "global"`` the single target is the mean of the per-layer targets,
    weighted by layer size (a uniform target when a plain number was given).
    """
    if scope == "layer":
        return {n: _keep_largest(w.abs(), sparsity[n]) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    target = sum(sparsity[n] * w.numel() for n, w in weights.items()) / total
    scores = torch.cat([w.abs().flatten() for w in weights.values()])
    k = int(round(target * scores.numel()))
    if k == 0:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    threshold = torch.kthvalue(scores, k).values
    masks = {n: w.abs() > threshold for n, w in weights.items()}
    return masks


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(round(sparsity * scores.numel()))
    if k == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    order = torch.argsort(scores.flatten(), stable=True)
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.reshape(scores.shape)


@register(PruneConfig)
def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> nn.Module:
    """Magnitude pruning, per layer or global; masks hold through later fine-tuning."""
    layers = select(model, cfg.layers)
    targets = per_layer(cfg.sparsity, layers, "sparsity")
    with torch.no_grad():
        # A weight already constrained (an earlier prune) keeps its zeros: score what it computes.
        effective = {n: layers[n].weight.detach() for n in targets}
    masks = magnitude_masks(effective, targets, cfg.scope)
    per_layer_sparsity = {}
    for name, mask in masks.items():
        constrain(layers[name], "weight", Mask(mask))
        per_layer_sparsity[name] = round(1 - float(mask.float().mean()), 6)
    ctx.notes["layer_sparsity"] = per_layer_sparsity
    return model
