"""``prune`` with ``pattern: channel``: remove whole output channels/neurons/heads by surgery.

The dependency graph (``modelzip.graph``, traced on a real batch) says which layers change
together; each group's channels are ranked by importance (the L1/L2 norm of the weights that
write each channel and of those that read it, Taylor, BatchNorm scale, or random), and the
least important are cut from every member, so
the model holds smaller tensors. BatchNorms are sliced with their channels and kept while the
recipe runs, so that fine-tuning trains with them (measured on the residual CNN fixture,
digits, 50% channels and 8 epochs: 95.8% kept vs 71.7% with BatchNorm folded before
fine-tuning), and folded into the layers after the recipe's last stage (``fold_bn: after``,
the default; exact in eval mode, so the stored model has no BatchNorm at no cost in
accuracy). ``fold_bn: first`` folds them before ranking (after pruning for ``criterion:
bn_scale``, which ranks by them), ``off`` never. Schedules: one shot,
iterative (prune, fine-tune, repeat) or gradual (channels are masked to zero while training
on a cubic ramp, then cut, which is exact because they are zero).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.context import Context
from modelzip.errors import UnsupportedError
from modelzip.graph import Group, channel_groups, remove_channels
from modelzip.graph.surgery import removed_positions
from modelzip.methods._prune_scores import calibration_grads, effective_weight
from modelzip.nn.constraints import Mask, constrain, constraints_of
from modelzip.ops import pruning
from modelzip.targets import per_layer, select

if TYPE_CHECKING:
    from modelzip.methods.prune import PruneConfig

Chosen = dict[int, tuple[Group, list[str]]]


def prune_channels(
    model: nn.Module, layers: dict[str, nn.Module], cfg: PruneConfig, ctx: Context
) -> nn.Module:
    """Structured pruning: one shot, iterative rounds, or a gradual ramp while training."""
    from modelzip.methods.fold_bn import NORMS, fold_into

    fold_first = cfg.fold_bn == "first" and cfg.criterion != "bn_scale"
    if fold_first:
        ctx.notes["fold_bn"] = fold_into(model, ctx)
    targets = per_layer(cfg.sparsity, layers, "sparsity")
    before = {n: _width(layers[n]) for n in targets}
    history: list[dict[str, Any]] = []
    ctx.notes["skipped"] = {}
    if cfg.schedule == "gradual":
        _gradual(model, targets, before, cfg, ctx)
    else:
        rounds = (cfg.rounds or 3) if cfg.schedule == "iterative" else 1
        for r in range(1, rounds + 1):
            step = {n: pruning.iterative_sparsity(r, rounds, s) for n, s in targets.items()}
            _one_round(model, targets, step, before, cfg, ctx, stream=r)
            if cfg.schedule == "iterative":
                loss = ctx.fit(
                    model, epochs=cfg.epochs, lr=cfg.lr, description=f"channel prune {r}/{rounds}"
                )
                history.append({"round": r, "train_loss": round(loss, 6)})
    if cfg.fold_bn == "first" and not fold_first:  # bn_scale ranks by them: fold after
        ctx.notes["fold_bn"] = fold_into(model, ctx)
    elif cfg.fold_bn == "after" and any(isinstance(m, NORMS) for m in model.modules()):
        ctx.defer("fold_bn", fold_into)
        ctx.notes["fold_bn"] = "after the recipe's last stage"
    after = {n: _width(model.get_submodule(n)) for n in targets if n not in ctx.notes["skipped"]}
    ctx.notes["channels"] = {n: f"{before[n]} -> {after[n]}" for n in after}
    ctx.notes["layer_sparsity"] = {n: round(1 - after[n] / before[n], 6) for n in after}
    if history:
        ctx.notes["rounds"] = history
    return model


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else cast(int, layer.out_channels)


def _choose(model: nn.Module, targets: dict[str, float], cfg: PruneConfig, ctx: Context) -> Chosen:
    """The prunable groups of the selected layers (refusing or skipping the others)."""
    groups = channel_groups(model, ctx.data.example(2).to(ctx.device))
    exact = set(cfg.layers or ())
    chosen: Chosen = {}
    skipped: dict[str, str] = {}
    for name in targets:
        g = groups.get(name)
        if g is None:
            reader = getattr(model.get_submodule(name), "read_by", None)
            skipped[name] = (
                f"{reader} reads it whole: its units are not removed by surgery"
                if reader
                else "the forward pass on the example batch never calls it"
            )
            continue
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
    heads = {g.producers[0]: g.block for g, _ in chosen.values() if g.block > 1}
    if heads:
        ctx.notes["block"] = heads  # removed in whole blocks (attention heads)
    return chosen


def _plan(
    model: nn.Module,
    targets: dict[str, float],
    step: dict[str, float],
    before: dict[str, int],
    cfg: PruneConfig,
    ctx: Context,
    stream: int,
) -> list[tuple[Group, torch.Tensor]]:
    chosen = _choose(model, targets, cfg, ctx)
    importance = {k: _importance(model, g, cfg, ctx, stream) for k, (g, _) in chosen.items()}
    keep = _keep_sets(chosen, importance, step, before, cfg.resolved_scope, cfg.round_to)
    return [(g, keep[k]) for k, (g, _) in chosen.items()]


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
    plan = _plan(model, targets, step, before, cfg, ctx, stream)
    means = _input_means(model, plan, ctx, cfg.calibration_batches) if cfg.bias_repair else None
    backup = _backup(model, plan)
    repaired = remove_channels(model, plan, means=means)
    if repaired:
        ctx.notes["bias_repaired"] = sorted(set(ctx.notes.get("bias_repaired", [])) | set(repaired))
    _check_runs(model, ctx, backup)


def _backup(model: nn.Module, plan: list[tuple[Group, torch.Tensor]]) -> dict[str, nn.Module]:
    """Copies of every layer the surgery edits, to put back if the model no longer runs."""
    names = {m.layer for g, _ in plan for m in g.members}
    return {n: copy.deepcopy(model.get_submodule(n)) for n in names}


def _check_runs(model: nn.Module, ctx: Context, backup: dict[str, nn.Module]) -> None:
    """Run the pruned model once; if it fails (a shape written as a constant in ``forward``,
    such as ``x.view(-1, 400)``), restore the layers and say so."""
    try:
        with torch.no_grad():
            model.eval()(ctx.data.example(2).to(ctx.device))
    except RuntimeError as exc:
        for name, layer in backup.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
        raise UnsupportedError(
            f"the model no longer runs with fewer channels (a shape fixed in its forward, "
            f"e.g. view(-1, 400)? the model is left unpruned): {str(exc).splitlines()[0]}"
        ) from None


def _input_means(
    model: nn.Module, plan: list[tuple[Group, torch.Tensor]], ctx: Context, batches: int
) -> dict[str, torch.Tensor]:
    """Mean of every input position of the consumers that lose inputs (val batches)."""
    names = {layer for (layer, role) in removed_positions(plan) if role == "in"}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Any:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().double()
            flat = (
                x.reshape(-1, x.shape[-1])
                if isinstance(module, nn.Linear)
                else (x.transpose(0, 1).reshape(x.shape[1], -1).T)
            )
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0) + flat.shape[0]

        return pre

    for name in names:
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(ctx.data.val):
                if i >= batches:
                    break
                model(x.to(ctx.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n] / counts[n]).float() for n in sums}


def _importance(
    model: nn.Module, group: Group, cfg: PruneConfig, ctx: Context, stream: int
) -> torch.Tensor:
    """Per-channel importance of a group: its producers' (and depthwise followers') scores,
    each normalized to sum 1, and for the magnitude criterion its consumers' too
    (``_consumer_scores``); for ``bn_scale`` the |gamma| of its BatchNorms."""
    if cfg.criterion == "random":
        gen = ctx.generator(offset=2000 + stream)
        return pruning.random_scores(torch.Size([group.channels]), gen)
    if cfg.criterion == "bn_scale":
        scores = _bn_scale(model, group)
        if scores is not None:
            return scores
        ctx.notes.setdefault("bn_scale_fallback", []).append(group.producers[0])
    owners = select(model, [*group.producers, *group.followers])
    grads = (
        calibration_grads(model, owners, ctx, cfg.calibration_batches)
        if cfg.criterion == "taylor"
        else None
    )
    total = torch.zeros(group.channels)
    for name, layer in owners.items():
        w = effective_weight(layer)
        if grads is not None:
            s = pruning.channel_scores(pruning.taylor_scores(w, grads[name]), "l1")
        else:
            s = pruning.channel_scores(w, cfg.norm)
        total += (s / s.sum().clamp_min(1e-12)).cpu()
    if grads is None:
        total += _consumer_scores(model, group, cfg.norm)
    return total


def _consumer_scores(model: nn.Module, group: Group, norm: str) -> torch.Tensor:
    """Per channel, the norm of the weights that read it: each consumer's input columns
    (through concatenation offsets and flatten repeats), normalized to sum 1 per consumer.

    Why: a channel whose outgoing weights are small matters little however large its incoming
    ones are (Torch-Pruning's group importance sums both sides too). Measured on the residual
    CNN fixture (digits, 50% of channels, 8 epochs of fine-tuning, 5 seeds): 97.6 +- 0.5% with
    the consumers against 95.7 +- 0.5% with the producers alone (Torch-Pruning: 96.4 +- 0.6%);
    LeNet-5 on mnist5k 97.0 against 96.6% (3 seeds). Grouped convolutions are left out: their
    input columns are their own channels (the depthwise followers already count them).
    """
    total = torch.zeros(group.channels)
    for m in group.members:
        if m.role != "in":
            continue
        layer = model.get_submodule(m.layer)
        if getattr(layer, "groups", 1) != 1:
            continue
        w = effective_weight(layer).detach().float().cpu()
        cols = w.transpose(0, 1).reshape(w.shape[1], -1)  # one row per input position
        energy = cols.abs().sum(1) if norm == "l1" else cols.pow(2).sum(1)
        first = (m.offset + torch.arange(m.hi - m.lo)) * m.repeat
        positions = first[:, None] + torch.arange(m.repeat)[None, :]
        s = torch.zeros(group.channels)
        s[m.lo : m.hi] = energy[positions].sum(1)
        if norm != "l1":
            s = s.sqrt()
        if float(s.sum()) > 0:
            total += s / s.sum()
    return total


def _bn_scale(model: nn.Module, group: Group) -> torch.Tensor | None:
    """Network Slimming's importance: |gamma| of the group's BatchNorms and GroupNorms (None
    if none)."""
    total = torch.zeros(group.channels)
    found = False
    for m in group.members:
        bn = model.get_submodule(m.layer)
        if m.role != "out" or not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm):
            continue
        if bn.weight is None:
            continue
        gamma = bn.weight.detach().abs().cpu()
        total[m.lo : m.hi] += gamma[m.offset : m.offset + m.hi - m.lo]
        found = True
    return total if found else None


def select_keep(
    scores: torch.Tensor,
    n_keep: int,
    block: int = 1,
    sections: list[tuple[int, int]] | None = None,
    *,
    round_to: int = 1,
) -> torch.Tensor:
    """Sorted channels to keep: the best ``n_keep`` (rounded to whole blocks, the same count
    in each section, never none; with ``round_to``, a multiple of it per section, the
    nearest one, at least ``round_to``)."""
    c = scores.numel()
    parts = sorted(set(sections or [])) or [(0, c)]
    frac = n_keep / c
    out = []
    for lo, hi in parts:
        s = scores[lo:hi].float()
        units = s.reshape(-1, block).sum(1) if block > 1 else s
        k = max(1, min(units.numel(), round(frac * units.numel())))
        if round_to > 1 and block == 1:
            k = min(units.numel(), max(round_to, round_to * round(k / round_to)))
        top = torch.topk(units, k).indices
        idx = (top[:, None] * block + torch.arange(block)[None, :]).flatten() if block > 1 else top
        out.append(idx + lo)
    return torch.sort(torch.cat(out)).values


def _keep_sets(
    chosen: Chosen,
    importance: dict[int, torch.Tensor],
    step: dict[str, float],
    before: dict[str, int],
    scope: str,
    round_to: int | None = None,
) -> dict[int, torch.Tensor]:
    """Channels to keep per group. Targets are fractions of the original width; a group
    takes the largest target among its selected layers."""
    wanted: dict[int, int] = {}
    for k, (g, names) in chosen.items():
        s = max(step[n] for n in names)
        original = max(before[n] for n in names)
        wanted[k] = max(1, min(g.channels, round((1 - s) * original)))
    if scope == "global":
        # One ranking of channels normalized per group (mean 1), same total kept.
        keys = list(chosen)
        norm = [importance[k] / importance[k].mean().clamp_min(1e-12) for k in keys]
        n_keep = sum(wanted.values())
        ranks = torch.zeros(sum(n.numel() for n in norm), dtype=torch.bool)
        ranks[torch.topk(torch.cat(norm), n_keep).indices] = True
        start = 0
        for k, scores in zip(keys, norm, strict=True):
            wanted[k] = max(1, int(ranks[start : start + scores.numel()].sum()))
            start += scores.numel()
    return {
        k: select_keep(importance[k], wanted[k], g.block, g.sections, round_to=round_to or 1)
        for k, (g, _) in chosen.items()
    }


def _gradual(
    model: nn.Module,
    targets: dict[str, float],
    before: dict[str, int],
    cfg: PruneConfig,
    ctx: Context,
) -> None:
    """Train for ``epochs`` while channels are masked to zero on Zhu & Gupta's cubic ramp
    (ending at 75% of the steps); then cut the masked channels (exact: they are zero)."""
    chosen = _choose(model, targets, cfg, ctx)
    masks, added = _channel_masks(model, chosen)
    steps = cfg.epochs * len(ctx.data.train)
    updates = cfg.rounds or 10
    every = max(1, int(0.75 * steps) // updates)
    end = every * updates
    history: list[dict[str, Any]] = []

    def update(step: int) -> None:
        at = {
            n: pruning.cubic_sparsity(
                step, final=s, initial=min(cfg.initial_sparsity, s), begin=0, end=end
            )
            for n, s in targets.items()
        }
        importance = {k: _importance(model, g, cfg, ctx, step) for k, (g, _) in chosen.items()}
        for k in chosen:
            importance[k] = importance[k] * masks[k]  # masked channels stay removed
        keep = _keep_sets(chosen, importance, at, before, cfg.resolved_scope, cfg.round_to)
        for k, (g, _) in chosen.items():
            row = torch.zeros(g.channels, dtype=torch.bool)
            row[keep[k]] = True
            masks[k] &= row
            _apply_mask(model, g, masks[k])
        history.append(
            {
                "step": step,
                "kept": {chosen[k][0].producers[0]: int(m.sum()) for k, m in masks.items()},
            }
        )

    def on_step(step: int) -> None:
        if step % every == 0 and step <= end:
            update(step)

    if cfg.initial_sparsity > 0:
        update(0)
    loss = ctx.fit(
        model, epochs=cfg.epochs, lr=cfg.lr, on_step=on_step, description="gradual channel prune"
    )
    update(steps + 1)  # lands on the final sparsity if the ramp did not
    plan = [(g, torch.nonzero(masks[k]).flatten()) for k, (g, _) in chosen.items()]
    for layer, name in added:
        parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
    backup = _backup(model, plan)
    remove_channels(model, plan)
    _check_runs(model, ctx, backup)
    ctx.notes["steps"] = history
    ctx.notes["train_loss"] = round(loss, 6)


def _out_tensors(model: nn.Module, group: Group) -> list[tuple[nn.Module, str, Any]]:
    """(module, tensor name, member) for every output-side tensor holding the channels."""
    out = []
    for m in group.members:
        if m.role != "out":
            continue
        layer = model.get_submodule(m.layer)
        for name in ("weight", "bias"):
            if getattr(layer, name, None) is not None:
                out.append((layer, name, m))
    return out


def _channel_masks(model: nn.Module, chosen: Chosen) -> tuple[dict[int, torch.Tensor], list]:
    """All-ones masks on every output-side tensor, before the optimizer sees them."""
    added = []
    for g, _ in chosen.values():
        for layer, name, _ in _out_tensors(model, g):
            chain = constraints_of(layer, name)
            if not (chain and isinstance(chain[-1], Mask)):
                t = cast(torch.Tensor, getattr(layer, name))
                constrain(layer, name, Mask(torch.ones_like(t, dtype=torch.bool)))
                added.append((layer, name))
    return {k: torch.ones(g.channels, dtype=torch.bool) for k, (g, _) in chosen.items()}, added


def _apply_mask(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    for layer, name, m in _out_tensors(model, group):
        mask = cast(Mask, constraints_of(layer, name)[-1])
        rows = torch.ones(mask.mask.shape[0], dtype=torch.bool)
        rows[m.offset : m.offset + m.hi - m.lo] = keep[m.lo : m.hi]
        shape = (-1,) + (1,) * (mask.mask.dim() - 1)
        mask.mask = mask.mask & rows.view(shape).to(mask.mask.device)
