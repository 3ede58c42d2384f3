"""Pure pruning math on tensors: importance scores, keep-masks, N:M masks, schedules.

No module walking, I/O or logging here: the ``prune`` method feeds these functions the
weights (and gradients) it collected and attaches the resulting masks to the modules.
A keep-mask is a bool tensor shaped like the weight: True = kept, False = pruned.

Example:
    >>> w = torch.tensor([[0.1, -2.0, 0.3, 4.0]])
    >>> keep_smallest_out({"w": w.abs()}, {"w": 0.5})["w"].tolist()
    [[False, True, False, True]]
"""

from __future__ import annotations

import math

import torch

#: Score of an entry that is already zero in the model: it goes first, whatever the criterion,
#: so a second pruning pass never revives a pruned weight.
PRUNED_SCORE = -1.0


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """L1 importance |w| of every entry."""
    return weight.detach().abs().float()


def taylor_scores(weight: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """First-order Taylor importance: |w * dL/dw| summed over calibration batches.

    Args:
        weight: the weight as the model computes with it.
        grads: one gradient of the loss w.r.t. that weight per calibration batch.
    """
    if not grads:
        raise ValueError("taylor importance needs at least one calibration batch")
    w = weight.detach().float()
    return torch.stack([(w * g.float()).abs() for g in grads]).sum(0)


def random_scores(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Uniform random importance in (0, 1]: the control criterion of the benchmarks."""
    return 1.0 - torch.rand(shape, generator=generator)


def protect_pruned(scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Send entries that are already exactly zero to the front of the pruning order."""
    return torch.where(weight.detach() == 0, torch.full_like(scores, PRUNED_SCORE), scores)


def _prune_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    # argsort, not a threshold: ties at the cut (many zeros) still give exactly k pruned.
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep


def keep_smallest_out(
    scores: dict[str, torch.Tensor], sparsity: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Per-layer keep-masks: in each tensor, prune round(s * n) entries of lowest score."""
    out = {}
    for name, s in scores.items():
        k = int(round(sparsity[name] * s.numel()))
        out[name] = _prune_lowest(s.flatten(), k).reshape(s.shape)
    return out


def global_keep(
    scores: dict[str, torch.Tensor], sparsity: dict[str, float]
) -> dict[str, torch.Tensor]:
    """One ranking across all tensors: the target is the size-weighted mean of the targets.

    Layers compete with each other, so robust layers give up more weights than fragile ones
    (the usual result of global magnitude pruning).
    """
    names = list(scores)
    total = sum(scores[n].numel() for n in names)
    target = sum(sparsity[n] * scores[n].numel() for n in names) / total
    flat = torch.cat([scores[n].flatten().float() for n in names])
    keep = _prune_lowest(flat, int(round(target * total)))
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def threshold_keep(weight: torch.Tensor, rule: str, quality: float) -> torch.Tensor:
    """Keep |w| above a per-tensor threshold: ``quality * std(W)`` (Deep Compression) or
    ``quality * median(|W|)``.

    Already-zero entries are always pruned (they stay zero).
    """
    w = weight.detach().float()
    if rule == "std":
        threshold = quality * float(w.std())
    elif rule == "median":
        threshold = quality * float(w.abs().median())
    else:
        raise ValueError(f"unknown threshold rule {rule!r}; valid: std, median")
    return (w.abs() > threshold) & (w != 0)


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M keep-mask: in every group of M consecutive input weights keep the N best.

    Linear weights ``(out, in)`` are grouped along ``in``; conv weights ``(out, in, *k)``
    along the input channels at each kernel position (the layout sparse tensor cores use).
    The input dimension must be a multiple of ``m``.
    """
    if not 1 <= n <= m:
        raise ValueError(f"N:M needs 1 <= N <= M, got {n}:{m}")
    if scores.dim() < 2:
        raise ValueError("N:M needs a weight with an input dimension (2-D or more)")
    cin = scores.shape[1]
    if cin % m:
        raise ValueError(f"input dimension {cin} is not a multiple of M={m}")
    # (out, in, *k) -> (out, *k, in): groups of m run along the input channels.
    moved = scores.movedim(1, -1)
    groups = moved.reshape(-1, m)
    top = torch.topk(groups, n, dim=1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def channel_scores(scores: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Importance of each output channel/neuron (dim 0) from its entries' scores."""
    flat = scores.detach().float().reshape(scores.shape[0], -1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.pow(2).sum(1).sqrt()
    raise ValueError(f"unknown norm {norm!r}; valid: l1, l2")


def channels_to_keep(importance: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Sorted indices of the channels to keep: the best ``ceil((1-s) * C)``, at least one."""
    c = importance.numel()
    n_keep = max(1, min(c, math.ceil(round((1.0 - sparsity) * c, 6))))
    top = torch.topk(importance.float(), n_keep, sorted=False).indices
    return torch.sort(top).values


def cubic_sparsity(step: int, *, final: float, initial: float, begin: int, end: int) -> float:
    """Zhu & Gupta (2017) gradual schedule: s_t = s_f + (s_i - s_f) * (1 - progress)^3.

    Sparsity rises fast at first (many redundant weights) and slowly near the end, where the
    network has less room to recover.
    """
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1.0 - progress) ** 3


def iterative_sparsity(round_index: int, rounds: int, final: float) -> float:
    """Target after round ``round_index`` (1-based) of ``rounds``: each round removes the same
    fraction of the weights still present, reaching ``final`` at the last round."""
    return 1.0 - (1.0 - final) ** (round_index / rounds)
