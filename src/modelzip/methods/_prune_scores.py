"""Plumbing shared by the pruning schedules: importance scores of layers, masks on modules.

The math lives in ``modelzip.ops.pruning``; here the layers are walked, calibration batches
run, and masks attached to (or updated on) the modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from modelzip.context import Context
from modelzip.errors import DataError
from modelzip.nn.constraints import Mask, constrain, constraints_of, original
from modelzip.ops import pruning
from modelzip.task import split_batch, to_device


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as the layer computes with it (earlier masks and grids applied)."""
    with torch.no_grad():
        return cast(torch.Tensor, layer.weight).detach()


def batchnorm_row_scales(model: nn.Module, example: Any) -> dict[str, torch.Tensor]:
    """``|gamma / sqrt(var + eps)|`` per output channel of every layer a BatchNorm normalizes
    (the pairs ``fold_bn`` would fold; after a channel concatenation, each layer its share).

    A BatchNorm after a layer makes the layer's weight scale meaningless (it normalizes it
    away), so across layers only the weight times this scale, the weight after folding, says
    what an entry contributes. Ranking raw magnitudes globally emptied every depthwise
    convolution of a torchvision EfficientNet-B0 at 80% (their weights are small, their
    BatchNorms scale them up): the model fell to chance accuracy.
    """
    from modelzip.graph.fold import find_pairs, fold_factors
    from modelzip.graph.trace import record

    modules = dict(model.named_modules())
    pairs, _ = find_pairs(model, record(model, example))
    scales: dict[str, torch.Tensor] = {}
    for bn, layers in pairs.items():
        scale = fold_factors(cast(nn.BatchNorm2d, modules[bn]))[0].abs().float()
        start = 0
        for name in layers:
            rows = cast(torch.Tensor, modules[name].weight).shape[0]
            scales[name] = scale[start : start + rows]
            start += rows
    return scales


def calibration_grads(
    model: nn.Module, layers: Mapping[str, nn.Module], ctx: Context, batches: int
) -> dict[str, list[torch.Tensor]]:
    """Gradients of the task's loss w.r.t. each layer's weight, one per calibration batch (val
    split): cross-entropy for classifiers, cosine distance to the original for embeddings.

    The gradient is taken w.r.t. the stored tensor under the constraints; through a mask it
    is the masked gradient, so pruned entries score zero, as they should.
    """
    params = {n: original(m, "weight") for n, m in layers.items()}
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    was_training = model.training
    model.eval()  # calibration must not update BatchNorm statistics or drop units
    try:
        loss_fn = ctx.default_loss()  # the task's loss (cross-entropy, cosine to the original)
        for i, batch in enumerate(ctx.data.val):
            if i >= batches:
                break
            x, y = split_batch(batch)
            with torch.enable_grad():
                loss = loss_fn(model, to_device(x, ctx.device), y.to(ctx.device))
                got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, got, strict=True):
                grads[n].append(torch.zeros_like(params[n]) if g is None else g.detach())
    finally:
        model.train(was_training)
    if not all(grads.values()):
        raise DataError(
            "taylor importance needs labelled calibration batches; the val split is empty"
        )
    return grads


def entry_scores(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    criterion: str,
    ctx: Context,
    *,
    batches: int = 8,
    stream: int = 0,
    row_scales: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Importance of every weight entry per layer; entries already zero come first.
    ``row_scales`` (magnitude only) multiplies each named layer's scores per output row
    (``batchnorm_row_scales``)."""
    weights = {n: effective_weight(m) for n, m in layers.items()}
    if criterion == "magnitude":
        scores = {n: pruning.magnitude_scores(w) for n, w in weights.items()}
        for n, scale in (row_scales or {}).items():
            if n in scores and scale.numel() == scores[n].shape[0]:
                view = (-1,) + (1,) * (scores[n].dim() - 1)
                scores[n] = scores[n] * scale.to(scores[n].device).view(view)
    elif criterion == "taylor":
        grads = calibration_grads(model, layers, ctx, batches)
        scores = {n: pruning.taylor_scores(w, grads[n]) for n, w in weights.items()}
    elif criterion == "random":
        gen = ctx.generator(offset=1000 + stream)
        scores = {n: pruning.random_scores(w.shape, gen) for n, w in weights.items()}
    else:
        raise ValueError(f"unknown criterion {criterion!r}")
    return {n: pruning.protect_pruned(s, weights[n]) for n, s in scores.items()}


def set_mask(layer: nn.Module, keep: torch.Tensor) -> None:
    """Make ``keep`` the layer's weight mask: update the outermost Mask, or add one.

    Updating in place keeps the parameter objects the optimizer holds (gradual pruning
    changes masks while training runs). The new mask never revives an entry an earlier
    mask removed.
    """
    chain = constraints_of(layer, "weight")
    if chain and isinstance(chain[-1], Mask):
        chain[-1].mask = chain[-1].mask & keep.to(chain[-1].mask.device)
        return
    constrain(layer, "weight", Mask(keep))


def layer_sparsity(layers: Mapping[str, nn.Module]) -> dict[str, float]:
    """Fraction of exactly-zero weight entries per layer, as the layers compute."""
    out = {}
    for name, layer in layers.items():
        w = effective_weight(layer)
        out[name] = round(float((w == 0).float().mean()), 6)
    return out
