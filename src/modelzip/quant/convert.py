"""Conversion: fake-quantized float layers -> integer-kernel layers (``nn.quantized``).

A layer converts when its weight's outermost constraint is an ``AffineQuant`` grid of at most
8 bits per tensor or per channel; its codes are taken from that constraint unchanged, so the
integer layer computes with exactly the weights the fake-quant model used. Inside a plain
``nn.Sequential``, consecutive integer layers separated only by modules that commute with
uniform quantization (ReLU, max-pooling, flatten, identity, dropout) pass uint8 tensors
straight through: the earlier layer requantizes its int32 accumulator directly to the next
layer's input grid, which also applies the ReLU for free when that grid starts at zero.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.nn import int8_runtime
from modelzip.nn.constraints import AffineQuant, constraints_of
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.fastpath import keep_transformer_slow_paths, weight_read_directly
from modelzip.nn.quantized import QuantConv2d, QuantLinear, _QuantBase

#: Modules that give the same result on uint8 codes as on the real values they stand for.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)


def why_not_convertible(layer: nn.Module) -> str | None:
    """None when ``layer`` can run on the integer kernels, else the reason it cannot."""
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        return f"{type(layer).__name__} has no int8 kernel here (Linear and Conv2d do)"
    if (reason := weight_read_directly(layer)) is not None:
        return f"{reason}: it computes in float"
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):
            return f"padding={layer.padding!r} (only numeric zero padding runs on int8 kernels)"
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} (int8 kernels pad with zeros)"
    chain = constraints_of(layer, "weight")
    if not chain or not isinstance(chain[-1], AffineQuant):
        return "weight is not on a uniform quantization grid"
    q = chain[-1]
    if q.bits > 8:
        return f"{q.bits}-bit weights do not fit the int8 kernels"
    if q.group_size is not None:
        return "per-group weight scales do not fit the int8 kernels (use tensor or channel)"
    return None


def to_integer(
    layer: nn.Module, in_qparams: tuple[float, int], out_qparams: tuple[float, int]
) -> _QuantBase:
    """The integer-kernel replacement of a convertible, fake-quantized layer."""
    reason = why_not_convertible(layer)
    if reason is not None:
        raise ValueError(reason)
    # Checked above: a parametrized weight whose outermost constraint is an AffineQuant.
    plists = cast(nn.ModuleDict, layer.parametrizations)
    plist = cast(parametrize.ParametrizationList, plists["weight"])
    x = plist.original
    for p in list(plist)[:-1]:
        x = p(x)
    q = cast(AffineQuant, plist[-1])
    codes, scale, zp = q.codes(x)
    if not q.signed:  # unsigned codes (asymmetric default): shift into int8
        codes, zp = codes.int() - 128, zp - 128
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new: _QuantBase = QuantLinear(layer.in_features, layer.out_features, bias=bias)
    else:
        conv = cast(nn.Conv2d, layer)
        # The stubs type a Conv2d's sizes as tuple[int, ...] (padding also str, refused above).
        new = QuantConv2d(
            conv.in_channels,
            conv.out_channels,
            cast("tuple[int, int]", conv.kernel_size),
            stride=cast("tuple[int, int]", conv.stride),
            padding=cast("tuple[int, int]", conv.padding),
            dilation=cast("tuple[int, int]", conv.dilation),
            groups=conv.groups,
            bias=bias,
        )
    new.set_weight(codes, scale, zp)
    if bias:
        cast(torch.Tensor, new.bias).copy_(cast(torch.Tensor, layer.bias).detach())
    new.set_qparams(in_qparams, out_qparams)
    return new


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    keep_transformer_slow_paths(model)  # a fused transformer kernel would read its weight


def chain_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Let integer layers hand uint8 tensors to the next integer layer inside plain
    ``nn.Sequential`` containers; returns the (producer, consumer) pairs chained."""
    pairs: list[tuple[str, str]] = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        kids = list(seq.named_children())
        for i, (name, mod) in enumerate(kids):
            if not isinstance(mod, _QuantBase):
                continue
            for nxt_name, nxt in kids[i + 1 :]:
                if isinstance(nxt, _QuantBase):
                    mod.out_float = False
                    mod.set_qparams(
                        (float(mod.in_scale), int(mod.in_zero_point)),
                        (float(nxt.in_scale), int(nxt.in_zero_point)),
                    )
                    prefix = f"{seq_name}." if seq_name else ""
                    pairs.append((prefix + name, prefix + nxt_name))
                    break
                if not _passes_codes(nxt):
                    break
    return pairs


def _passes_codes(m: nn.Module) -> bool:
    if parametrize.is_parametrized(m) or m._forward_hooks or m._forward_pre_hooks:
        return False
    return type(m) in PASS_THROUGH


def kernel_report(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, object]:
    """Which int8 kernels this CPU runs and how far they are from the exact reference.

    The reference (fp32 on the dequantized codes) is what CPUs without VNNI run; measuring the
    engine against it on the calibration batches gives the precision cost of either choice.
    """
    info: dict[str, object] = dict(int8_runtime.describe())
    if not batches or not any(isinstance(m, _QuantBase | DynQuantLinear) for m in model.modules()):
        return info
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        with int8_runtime.use("reference"):
            ref = torch.cat([model(x).float() for x in batches])
        out = torch.cat([model(x).float() for x in batches])
    model.train(was_training)
    diff = (out - ref).abs()
    info["max_abs_diff_vs_reference"] = float(f"{float(diff.max()):.4g}")
    info["mean_abs_diff_vs_reference"] = float(f"{float(diff.mean()):.4g}")
    return info
