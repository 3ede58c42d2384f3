"""Mixed precision for ``gptq``: spend an ``average_bits`` budget where it helps most.

Each layer's sensitivity at ``b`` bits is, by default (``sensitivity: end_to_end``), its
effect on the *model's* output: the squared error of the model's outputs on a calibration
batch with only that layer rounded to ``b`` bits, relative to the outputs' energy
(``end_to_end_sensitivity``). A layer's own output error does not rank layers by what they
cost the model (on MiniLM the FFN's second matrices have ordinary own error yet cause most of
the embedding error; a budget spent by own error measured worse than uniform bits). The
effect is measured with round-to-nearest codes, so for the layers GPTQ will quantize it
overstates their error relative to embedding tables (which are rounded to nearest). With
``sensitivity: layer`` it is the layer's own relative output error,
``sum_j E[x_j^2] ||dW[:, j]||^2 / sum_j E[x_j^2] ||W[:, j]||^2``, from the second
moments of its calibration inputs (uniform for embedding tables, whose rows are looked up).
Starting from the fewest bits, the layer whose next step removes the most error per added
bit-weight gets it, until the budget (code bits per weight, averaged over all selected
weights) is spent: a greedy Lagrangian allocation, deterministic for given data.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from modelzip.methods._gptq_calib import Stats
from modelzip.ops import gptq as ops


def sensitivity(
    w: torch.Tensor, stats: Stats | None, choices: list[int], group_size: int | None
) -> dict[int, float]:
    """Relative output error of round-to-nearest at each of ``choices`` bits."""
    d = stats.diag().float() if stats is not None and stats.rows else torch.ones(w.shape[1])
    g = ops.fit_group_size(w.shape[1], group_size)
    signal = float((w.pow(2) * d).sum()) or 1.0
    out = {}
    for b in choices:
        w_hat = ops.rtn(w, bits=b, group_size=g).w_hat
        out[b] = float(((w - w_hat).pow(2) * d).sum()) / signal
    return out


def end_to_end_sensitivity(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batch: torch.Tensor,
    choices: list[int],
    group_size: int | None,
) -> dict[str, dict[int, float]] | None:
    """Each layer's effect on the model's output at each of ``choices`` bits: the squared
    error of the model's outputs on ``batch`` (at most 32 samples) with only that layer's
    weight rounded to nearest at ``b`` bits (every other layer float), relative to the
    outputs' energy. None when the model's output is not one float tensor. The weights are
    put back exactly."""
    x = batch[:32]
    out: dict[str, dict[int, float]] = {}
    with torch.no_grad():
        ref = model.eval()(x)
        if not isinstance(ref, torch.Tensor) or not ref.is_floating_point():
            return None
        ref = ref.float()
        signal = float(ref.pow(2).sum()) or 1.0
        for name, layer in layers.items():
            w = cast(torch.Tensor, layer.weight)
            kept = w.detach().clone()
            flat = kept.float().reshape(kept.shape[0], -1)
            g = ops.fit_group_size(flat.shape[1], group_size)
            out[name] = {}
            try:
                for b in choices:
                    w_hat = ops.rtn(flat, bits=b, group_size=g).w_hat
                    w.copy_(w_hat.reshape(w.shape).to(w.dtype))
                    err = float((model(x).float() - ref).pow(2).sum())
                    out[name][b] = err / signal
            finally:
                w.copy_(kept)
    return out


def allocate_bits(
    weights: dict[str, torch.Tensor],
    stats: dict[str, Stats],
    choices: list[int],
    average_bits: float,
    group_size: int | None = 128,
    measured: dict[str, dict[int, float]] | None = None,
) -> tuple[dict[str, int], float]:
    """Bits per layer within ``average_bits`` (weighted by weight count), and the average
    reached. ``measured`` (``end_to_end_sensitivity``) replaces the per-layer estimate."""
    choices = sorted(choices)
    sens = measured or {
        n: sensitivity(w, stats.get(n), choices, group_size) for n, w in weights.items()
    }
    size = {n: w.numel() for n, w in weights.items()}
    total = sum(size.values())
    level = dict.fromkeys(weights, 0)
    used = choices[0] * total
    budget = average_bits * total
    while True:
        best, best_gain = None, 0.0
        for n in weights:
            i = level[n]
            if i + 1 >= len(choices):
                continue
            extra = (choices[i + 1] - choices[i]) * size[n]
            if used + extra > budget + 1e-9:
                continue
            gain = (sens[n][choices[i]] - sens[n][choices[i + 1]]) / extra
            if best is None or gain > best_gain:
                best, best_gain = n, gain
        if best is None:
            break
        used += (choices[level[best] + 1] - choices[level[best]]) * size[best]
        level[best] += 1
    return {n: choices[i] for n, i in level.items()}, round(used / total, 4)
