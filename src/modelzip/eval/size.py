"""Counting what a model stores: parameters, nonzeros, bytes."""

from __future__ import annotations

import io

import torch
from torch import nn
from torch.nn.utils import parametrize


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every learnable tensor as the model uses it (constraints applied), by state name.

    Modules that store weights in buffers (integer kernels) expose them through a
    ``stored_weights() -> dict[str, Tensor]`` method, with dequantized values.
    """
    out: dict[str, torch.Tensor] = {}
    skip: list[str] = []
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            if ".parametrizations" in f".{mod_name}" or any(
                mod_name.startswith(s + ".") for s in skip
            ):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            stored = getattr(module, "stored_weights", None)
            if callable(stored):
                out.update({prefix + k: v for k, v in stored().items()})
                skip.append(mod_name)
                continue
            for name, p in module._parameters.items():
                if p is not None:
                    out[prefix + name] = p.detach()
            if parametrize.is_parametrized(module):
                for name in module.parametrizations:
                    out[prefix + name] = getattr(module, name).detach()
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of the model as it computes."""
    weights = effective_weights(model)
    total = sum(t.numel() for t in weights.values())
    nonzero = sum(int(torch.count_nonzero(t)) for t in weights.values())
    return total, nonzero


def torch_save_bytes(model: nn.Module) -> int:
    """Size of the fp32 state_dict written by ``torch.save``: what a user has before modelzip."""
    state = {
        k: v.detach().float() if v.is_floating_point() else v
        for k, v in effective_weights(model).items()
    }
    for name, buf in model.named_buffers():
        if ".parametrizations." not in name:
            state.setdefault(name, buf)
    out = io.BytesIO()
    torch.save(state, out)
    return out.tell()
