"""Fold BatchNorm into the Conv/Linear that feeds it (exact in eval mode).

Pairs are found from a real forward pass (``modelzip.graph.trace``), not from module order:
a BatchNorm folds into a layer when its input is exactly that layer's output, nothing else
reads that output, both are called once, and the norm works on the layer's output
channels. The layer's weight rows are scaled by ``gamma / sqrt(var + eps)``, its bias
becomes ``(b - mean) * gamma / sqrt(var + eps) + beta``, and the BatchNorm is replaced by
``nn.Identity`` (so the .mzip file stores no BatchNorm vectors).

Example:
    >>> report = fold_batchnorm(model, example_batch)        # doctest: +SKIP
    >>> report["folded"]                                      # doctest: +SKIP
    {'stem_bn': 'stem', 'blocks.0.bn1': 'blocks.0.conv1', ...}

A BatchNorm after ``torch.cat`` of layer outputs on the channel dim folds into each of them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.graph.trace import Graph, Node, record
from modelzip.nn.constraints import Mask

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def fold_factors(
    bn: nn.BatchNorm1d | nn.BatchNorm2d,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(z) == z * scale + shift`` per channel in eval mode."""
    mean = cast(torch.Tensor, bn.running_mean).detach().double()
    var = cast(torch.Tensor, bn.running_var).detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_pair(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``layer``'s outputs ``out * scale + shift`` per output channel (weights edited in
    place; a bias is added when missing). A pruning mask on the weight stays valid (rows are
    only scaled); other constraints are refused by ``foldable``."""
    if parametrize.is_parametrized(layer, "weight"):
        target = cast(Any, layer).parametrizations["weight"].original
    else:
        target = layer.weight
    view = (-1,) + (1,) * (target.dim() - 1)
    old_bias = cast(torch.Tensor | None, layer.bias)
    with torch.no_grad():
        dtype = target.dtype
        scale, shift = scale.to(target.device), shift.to(target.device)
        target.copy_((target.double() * scale.view(view)).to(dtype))
        b = old_bias.detach().double() if old_bias is not None else torch.zeros_like(scale)
        new_bias = (b * scale + shift).to(dtype)
        if old_bias is not None:
            old_bias.copy_(new_bias)
    if old_bias is None:
        layer.bias = nn.Parameter(new_bias)


def foldable(layer: nn.Module, bn: nn.Module, name: str) -> str | None:
    """Why ``bn`` cannot fold into ``layer``, or None when it can."""
    if not isinstance(bn, NORMS):
        return "not a BatchNorm"
    if not bn.track_running_stats or bn.running_mean is None:
        return f"{name} has no running statistics (it normalizes with batch statistics)"
    for pname in ("weight", "bias"):
        if parametrize.is_parametrized(layer, pname):
            plist = cast(Any, layer).parametrizations[pname]
            for p in plist:
                if not isinstance(p, Mask):
                    kind = getattr(p, "kind", type(p).__name__)
                    return f"its {pname} is under a {kind} constraint"
    if parametrize.is_parametrized(bn):
        return f"{name} is parametrized"
    return None


def find_pairs(model: nn.Module, graph: Graph) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({bn: layers}, {bn: why not})`` for every BatchNorm the forward pass calls. A
    BatchNorm after a channel concatenation of layer outputs folds into each of them (its
    channels in concatenation order)."""
    modules = dict(model.named_modules())
    made_by: dict[int, str] = {}
    cats: dict[int, tuple[list[str], list[torch.Tensor]]] = {}
    readers: dict[int, int] = {}
    for node in graph.nodes:
        for t in node.inputs:
            readers[id(t)] = readers.get(id(t), 0) + 1
        if node.kind == "module" and isinstance(modules[node.target], LAYERS):
            for t in node.outputs:
                made_by[id(t)] = node.target
        elif node.kind == "function" and _is_channel_cat(node):
            parts = [made_by.get(id(t)) for t in node.inputs]
            if all(parts):
                cats[id(node.outputs[0])] = (cast(list[str], parts), node.inputs)
    for t in graph.outputs:
        readers[id(t)] = readers.get(id(t), 0) + 1
    pairs: dict[str, list[str]] = {}
    refused: dict[str, str] = {}
    for node in graph.nodes:
        if node.kind != "module" or not isinstance(modules[node.target], NORMS):
            continue
        name = str(node.target)
        x = node.inputs[0] if node.inputs else None
        if x is None or (id(x) not in made_by and id(x) not in cats):
            refused[name] = "its input is not the output of a Conv/Linear layer"
            continue
        srcs, outs = cats[id(x)] if id(x) in cats else ([made_by[id(x)]], [x])
        why = None
        for src, out in zip(srcs, outs, strict=True):
            why = why or foldable(modules[src], modules[name], name)
            if why is None and readers.get(id(out), 0) > 1:
                why = f"the output of {src} is also read elsewhere"
            if why is None and graph.calls.get(src, 0) > 1:
                why = f"{src} is called more than once"
            if why is None and isinstance(modules[src], nn.Linear) and out.dim() != 2:
                why = f"{name} normalizes dim 1 of {src}'s {out.dim()}-d output, not its features"
        if why is None and len(srcs) > 1 and readers.get(id(x), 0) > 1:
            why = "the concatenation it normalizes is also read elsewhere"
        if why is None and graph.calls.get(name, 0) > 1:
            why = f"{name} is called more than once"
        if why is None:
            pairs[name] = srcs
        else:
            refused[name] = why
    return pairs, refused


def _is_channel_cat(node: Node) -> bool:
    if node.target not in (torch.cat, torch.concat, torch.concatenate):
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    ndim = node.outputs[0].dim()
    return isinstance(dim, int) and ndim > 1 and dim in (1, 1 - ndim)


def fold_batchnorm(model: nn.Module, example: Any) -> dict[str, Any]:
    """Fold every foldable BatchNorm of ``model`` (in place), found on a forward pass of
    ``example``; returns ``{"folded": {bn: layer}, "kept": {bn: reason}}``."""
    pairs, refused = find_pairs(model, record(model, example))
    for bn_name, layer_names in pairs.items():
        bn = cast("nn.BatchNorm1d | nn.BatchNorm2d", model.get_submodule(bn_name))
        scale, shift = fold_factors(bn)
        start = 0
        for layer_name in layer_names:
            layer = model.get_submodule(layer_name)
            n = cast(torch.Tensor, layer.weight).shape[0]
            fold_pair(layer, scale[start : start + n], shift[start : start + n])
            start += n
        parent_name, _, child = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    folded = {bn: ", ".join(layers) for bn, layers in pairs.items()}
    return {"folded": folded, "kept": refused}
