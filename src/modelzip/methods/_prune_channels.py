"""``prune`` with ``pattern: channel``: remove whole output channels/neurons by surgery.

The dependency graph (``modelzip.graph``) says which layers change together; each group's
channels are ranked by the importance of its producers (L1/L2 norm, Taylor, or random),
and the least important are cut from every member, so the model holds smaller tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from modelzip.context import Context
from modelzip.errors import UnsupportedError
from modelzip.graph import Group, channel_groups, remove_channels
from modelzip.methods._prune_scores import calibration_grads, effective_weight
from modelzip.ops import pruning
from modelzip.targets import per_layer, select

if TYPE_CHECKING:
    from modelzip.methods.prune import PruneConfig


def prune_channels(
    model: nn.Module, layers: dict[str, nn.Module], cfg: PruneConfig, ctx: Context
) -> nn.Module:
    """Structured pruning, one shot or in rounds with fine-tuning between them."""
    targets = per_layer(cfg.sparsity, layers, "sparsity")
    before = {n: _width(layers[n]) for n in targets}
    rounds = (cfg.rounds or 3) if cfg.schedule == "iterative" else 1
    history: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        step = {n: pruning.iterative_sparsity(r, rounds, s) for n, s in targets.items()}
        _one_round(model, targets, step, before, cfg, ctx, stream=r)
        if cfg.schedule == "iterative":
            loss = ctx.fit(
                model,
                epochs=cfg.epochs,
                lr=cfg.lr,
                description=f"channel prune round {r}/{rounds}",
            )
            history.append({"round": r, "train_loss": round(loss, 6)})
    after = {n: _width(model.get_submodule(n)) for n in targets if n not in ctx.notes["skipped"]}
    ctx.notes["channels"] = {n: f"{before[n]} -> {after[n]}" for n in after}
    ctx.notes["layer_sparsity"] = {n: round(1 - after[n] / before[n], 6) for n in after}
    if history:
        ctx.notes["rounds"] = history
    return model


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else cast(int, layer.out_channels)


def _one_round(
    model: nn.Module,
    targets: dict[str, float],
    step: dict[str, float],
    before: dict[str, int],
    cfg: PruneConfig,
    ctx: Context,
    *,
    stream: int,
) -> None:
    groups = channel_groups(model, ctx.data.example(2).to(ctx.device))
    exact = set(cfg.layers or ())
    chosen: dict[int, tuple[Group, list[str]]] = {}
    skipped: dict[str, str] = {}
    for name in targets:
        g = groups[name]
        if not g.prunable:
            reason = "; ".join(g.blocked)
            if name in exact:  # asked for by name: refuse loudly rather than skip
                raise UnsupportedError(f"cannot remove output channels of {name}: {reason}")
            skipped[name] = reason
            continue
        chosen.setdefault(id(g), (g, []))[1].append(name)
    ctx.notes["skipped"] = skipped
    if not chosen:
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise UnsupportedError(f"no selected layer can lose output channels ({detail})")
    coupled = [g.producers for g, _ in chosen.values() if len(g.producers) > 1]
    if coupled:
        ctx.notes["coupled"] = coupled
    importance = {k: _importance(model, g, cfg, ctx, stream) for k, (g, _) in chosen.items()}
    keep = _keep_sets(chosen, importance, step, before, cfg.resolved_scope)
    for k, (g, _) in chosen.items():
        remove_channels(model, g, keep[k])
    try:
        with torch.no_grad():
            model.eval()(ctx.data.example(2).to(ctx.device))
    except RuntimeError as exc:
        raise UnsupportedError(
            f"channel surgery left inconsistent shapes (an op the graph analysis does not "
            f"know ties channels): {str(exc).splitlines()[0]}"
        ) from None


def _importance(
    model: nn.Module, group: Group, cfg: PruneConfig, ctx: Context, stream: int
) -> torch.Tensor:
    """Per-channel importance of a group: its producers' scores, each normalized to sum 1."""
    producers = select(model, group.producers)
    if cfg.criterion == "random":
        gen = ctx.generator(offset=2000 + stream)
        return pruning.random_scores(torch.Size([group.channels]), gen)
    grads = (
        calibration_grads(model, producers, ctx, cfg.calibration_batches)
        if (cfg.criterion == "taylor")
        else None
    )
    total = torch.zeros(group.channels)
    for name, layer in producers.items():
        w = effective_weight(layer)
        if grads is not None:
            s = pruning.channel_scores(pruning.taylor_scores(w, grads[name]), "l1")
        else:
            s = pruning.channel_scores(w, cfg.norm)
        total += s / s.sum().clamp_min(1e-12)
    return total


def _keep_sets(
    chosen: dict[int, tuple[Group, list[str]]],
    importance: dict[int, torch.Tensor],
    step: dict[str, float],
    before: dict[str, int],
    scope: str,
) -> dict[int, torch.Tensor]:
    """Channels to keep per group. Targets are fractions of the original width; a group
    takes the largest target among its selected layers."""
    wanted: dict[int, int] = {}
    for k, (g, names) in chosen.items():
        s = max(step[n] for n in names)
        original = max(before[n] for n in names)
        wanted[k] = max(1, min(g.channels, round((1 - s) * original)))
    if scope == "layer":
        return {
            k: pruning.channels_to_keep(importance[k], 1 - wanted[k] / chosen[k][0].channels)
            for k in chosen
        }
    # Global: one ranking of channels normalized per group (mean 1), same total kept.
    keys = list(chosen)
    norm = [importance[k] / importance[k].mean().clamp_min(1e-12) for k in keys]
    n_keep = sum(wanted.values())
    flat = torch.cat(norm)
    top = set(torch.topk(flat, n_keep).indices.tolist())
    out, start = {}, 0
    for k, scores in zip(keys, norm, strict=True):
        idx = [i for i in range(scores.numel()) if start + i in top]
        if not idx:  # never remove a layer entirely
            idx = [int(torch.argmax(scores))]
        out[k] = torch.tensor(sorted(idx), dtype=torch.long)
        start += scores.numel()
    return out
