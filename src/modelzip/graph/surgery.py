"""Model surgery: remove output channels of a dependency group, so the tensors really shrink.

The modules are edited in place (weights sliced, constructor attributes such as
``out_channels`` updated), so the .mzip architecture record describes the smaller layers and
``modelzip.load`` rebuilds them. Pruning masks on a sliced weight are sliced with it;
constraints that hold other state are refused.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.errors import UnsupportedError
from modelzip.graph.deps import Group
from modelzip.nn.constraints import Mask


def _slice(module: nn.Module, layer: str, name: str, dim: int, idx: torch.Tensor) -> None:
    """Keep entries ``idx`` along ``dim`` of ``module.<name>`` (parameter or buffer)."""
    if parametrize.is_parametrized(module, name):
        plists = cast(nn.ModuleDict, module.parametrizations)  # added by parametrize
        plist = cast(parametrize.ParametrizationList, plists[name])
        for p in plist:
            if isinstance(p, Mask):
                p.mask = p.mask.index_select(dim, idx)
            elif any(True for _ in p.parameters()) or any(True for _ in p.buffers()):
                raise UnsupportedError(
                    f"{layer}.{name}: cannot remove channels under a "
                    f"{getattr(p, 'kind', type(p).__name__)} constraint that holds state; "
                    "prune channels before this stage"
                )
        old = plist.original
        plist.original = nn.Parameter(
            old.detach().index_select(dim, idx).clone(), requires_grad=old.requires_grad
        )
        return
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, idx).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)


def remove_channels(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` (sorted indices) of ``group`` in every member layer."""
    if not group.prunable:
        raise UnsupportedError(
            f"cannot remove channels of {', '.join(group.producers) or 'this group'}: "
            f"{'; '.join(group.blocked)}"
        )
    keep = keep.to(torch.long)
    n = int(keep.numel())
    for name in group.producers:
        m = model.get_submodule(name)
        _slice(m, name, "weight", 0, keep)
        _slice(m, name, "bias", 0, keep)
        if isinstance(m, nn.Linear):
            m.out_features = n
        else:
            cast("nn.Conv1d | nn.Conv2d", m).out_channels = n
    for name in group.norms:
        m = model.get_submodule(name)
        for t in ("weight", "bias", "running_mean", "running_var"):
            _slice(m, name, t, 0, keep)
        cast("nn.BatchNorm1d | nn.BatchNorm2d", m).num_features = n
    for name, repeat in group.consumers:
        m = model.get_submodule(name)
        # After a flatten, channel c became features c*repeat ... c*repeat + repeat - 1.
        idx = (keep[:, None] * repeat + torch.arange(repeat)[None, :]).flatten()
        _slice(m, name, "weight", 1, idx)
        if isinstance(m, nn.Linear):
            m.in_features = int(idx.numel())
        else:
            cast("nn.Conv1d | nn.Conv2d", m).in_channels = n
    group.channels = n
