"""Model surgery: remove channels of dependency groups, so the tensors really shrink.

The modules are edited in place (weights sliced, constructor attributes such as
``out_channels`` updated), so the .mzip architecture record describes the smaller layers and
``modelzip.load`` rebuilds them. Pruning masks on a sliced weight are sliced with it;
constraints that hold other state are refused.

All groups of one pruning pass are cut together: a layer reading a concatenation of several
groups (or a BatchNorm normalizing one) loses the positions of every group at once, so the
offsets recorded by the analysis stay valid.

A consumer whose input loses channels can take their mean contribution into its bias
(``means``): exact when the removed channels were constant (a zeroed conv followed by a
BatchNorm shift), a first-order repair otherwise. Only where that is exact for constants:
Linear layers and convolutions without padding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from modelzip.errors import UnsupportedError
from modelzip.graph.deps import Group
from modelzip.nn.constraints import Mask


def _slice(module: nn.Module, layer: str, name: str, dim: int, idx: torch.Tensor) -> None:
    """Keep entries ``idx`` along ``dim`` of ``module.<name>`` (parameter or buffer)."""
    _edit(module, layer, name, lambda t: t.index_select(dim, idx.to(t.device)))


def _grouped_in(conv: nn.Module, layer: str, gone: set[int]) -> int:
    """Remove input channels ``gone`` of a grouped convolution (weight dim 1 holds each
    group's own inputs): the same count from every group; returns the new in_channels."""
    c = cast("nn.Conv1d | nn.Conv2d", conv)
    per_in, per_out = c.in_channels // c.groups, c.out_channels // c.groups
    local = [[i for i in range(per_in) if j * per_in + i not in gone] for j in range(c.groups)]
    if len({len(k) for k in local}) != 1:
        raise UnsupportedError(f"{layer}: groups would keep unequal numbers of input channels")
    rows = torch.tensor([k for k in local for _ in range(per_out)], dtype=torch.long)

    def take(t: torch.Tensor) -> torch.Tensor:
        idx = rows.to(t.device).view(*rows.shape, *([1] * (t.dim() - 2)))
        return t.gather(1, idx.expand(-1, -1, *t.shape[2:]))

    _edit(conv, layer, "weight", take)
    return len(local[0]) * c.groups


def _edit(module: nn.Module, layer: str, name: str, take: Callable[[Tensor], Tensor]) -> None:
    """Replace ``module.<name>`` (and a pruning mask on it) by ``take`` of it."""
    if parametrize.is_parametrized(module, name):
        plists = cast(nn.ModuleDict, module.parametrizations)  # added by parametrize
        plist = cast(parametrize.ParametrizationList, plists[name])
        for p in plist:
            if isinstance(p, Mask):
                p.mask = take(p.mask)
            elif any(True for _ in p.parameters()) or any(True for _ in p.buffers()):
                raise UnsupportedError(
                    f"{layer}.{name}: cannot remove channels under a "
                    f"{getattr(p, 'kind', type(p).__name__)} constraint that holds state; "
                    "prune channels before this stage"
                )
        old = plist.original
        plist.original = nn.Parameter(
            take(old.detach()).contiguous().clone(), requires_grad=old.requires_grad
        )
        return
    current = getattr(module, name, None)
    if current is None:
        return
    new = take(current.detach()).contiguous().clone()
    if isinstance(current, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=current.requires_grad))
    else:
        setattr(module, name, new)


def removed_positions(
    plan: Sequence[tuple[Group, torch.Tensor]],
) -> dict[tuple[str, str], set[int]]:
    """``(layer, role) -> positions to remove`` for keeping channels ``keep`` of each group."""
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    for group, keep in plan:
        if not group.prunable:
            raise UnsupportedError(
                f"cannot remove channels of {', '.join(group.producers) or 'this group'}: "
                f"{'; '.join(group.blocked)}"
            )
        kept = set(keep.tolist())
        gone = [c for c in range(group.channels) if c not in kept]
        for m in group.members:
            pos = out[(m.layer, m.role)]
            for c in gone:
                if m.lo <= c < m.hi:
                    base = (m.offset + c - m.lo) * m.repeat
                    pos.update(range(base, base + m.repeat))
    return out


def _compensate(layer: nn.Module, gone: list[int], mean: torch.Tensor) -> bool:
    """Add the removed inputs' mean contribution to ``layer``'s bias (before slicing)."""
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        pad = layer.padding
        if layer.groups != 1 or (pad != "valid" and any(cast(tuple, pad))):
            return False
    if parametrize.is_parametrized(layer, "bias"):
        return False
    w = cast(torch.Tensor, layer.weight).detach()
    idx = torch.tensor(gone, dtype=torch.long, device=w.device)
    cols = w.index_select(1, idx).reshape(w.shape[0], len(gone), -1).sum(2)
    delta = cols @ mean.to(w.device, w.dtype).index_select(0, idx)
    if layer.bias is None:
        layer.bias = nn.Parameter(delta.clone())
    else:
        with torch.no_grad():
            cast(torch.Tensor, layer.bias).add_(delta)
    return True


def remove_channels(
    model: nn.Module,
    plan: Sequence[tuple[Group, torch.Tensor]],
    *,
    means: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Keep only channels ``keep`` (sorted indices) of each group in every member layer.

    Args:
        model: edited in place.
        plan: ``(group, keep)`` pairs, cut together.
        means: optional per-layer mean of each input position (dim 1 of the weight),
            for bias compensation of the consumers.

    Returns:
        the consumers whose bias took the removed channels' mean contribution.
    """
    compensated = []
    for (name, role), gone_set in removed_positions(plan).items():
        m = model.get_submodule(name)
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            width = m.num_features
        elif isinstance(m, nn.GroupNorm):
            width = m.num_channels
        else:
            width = cast(torch.Tensor, m.weight).shape[0 if role == "out" else 1]
        gone = sorted(gone_set)
        keep = torch.tensor([i for i in range(width) if i not in gone_set], dtype=torch.long)
        n = int(keep.numel())
        if role == "in":
            if means is not None and name in means and gone and _compensate(m, gone, means[name]):
                compensated.append(name)
            if isinstance(m, nn.Linear):
                _slice(m, name, "weight", 1, keep)
                m.in_features = n
            elif cast("nn.Conv1d | nn.Conv2d", m).groups > 1:
                cast("nn.Conv1d | nn.Conv2d", m).in_channels = _grouped_in(m, name, gone_set)
            else:
                _slice(m, name, "weight", 1, keep)
                cast("nn.Conv1d | nn.Conv2d", m).in_channels = n
            continue
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            for t in ("weight", "bias", "running_mean", "running_var"):
                _slice(m, name, t, 0, keep)
            m.num_features = n
            continue
        if isinstance(m, nn.GroupNorm):
            per = m.num_channels // m.num_groups
            if len(gone) % per:  # the analysis removes whole groups; never a partial one
                raise UnsupportedError(f"{name}: channels would leave a GroupNorm group partial")
            for t in ("weight", "bias"):
                _slice(m, name, t, 0, keep)
            m.num_channels, m.num_groups = n, n // per
            continue
        _slice(m, name, "weight", 0, keep)
        _slice(m, name, "bias", 0, keep)
        if isinstance(m, nn.Linear):
            m.out_features = n
        else:
            conv = cast("nn.Conv1d | nn.Conv2d", m)
            if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
                conv.groups = conv.in_channels = n  # depthwise: one filter per channel
            conv.out_channels = n
    for group, keep in plan:
        group.channels = int(keep.numel())
    return compensated
