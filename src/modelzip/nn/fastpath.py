"""Keep PyTorch's fused transformer fast paths off where modelzip replaced a layer.

``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` given a padding mask) check in
eval mode whether they can run one fused kernel, and build its arguments by reading
``linear1.weight``, ``linear2.weight`` and ``self_attn.out_proj.weight`` directly instead of
calling those modules. A layer modelzip replaced (an int8 ``QuantLinear`` / ``DynQuantLinear``)
has no float ``weight``: the read failed with an AttributeError, and a ``weight`` that answered
would run the fused kernel in float, silently bypassing the integer layers. Both checks accept
documented ways out: an encoder layer takes its slow path (which calls its modules) when a
forward hook or pre-hook is attached to it, and an encoder when ``use_nested_tensor`` is off.
``MultiheadAttention`` always reads ``out_proj.weight`` directly, so that layer is never
replaced (``modelzip.quant.convert.why_not_convertible``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

_MARK = "_modelzip_calls_modules"


def weight_read_directly(layer: nn.Module) -> str | None:
    """Why ``layer`` must stay an ``nn.Linear`` with a float ``weight`` (its owner reads the
    weight instead of calling it), or None."""
    if isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return (
            "MultiheadAttention reads this layer's weight directly, never calling it "
            "(PyTorch marks it NonDynamicallyQuantizableLinear)"
        )
    reader = getattr(layer, "read_by", None)  # modelzip.nn.rnn.PackedWeight
    if isinstance(reader, str):
        return f"{reader} reads this layer's weight directly, never calling it"
    return None


def _calls_its_modules(_module: nn.Module, _args: Any) -> None:
    """A forward pre-hook that does nothing: its presence keeps the fast path off."""


def _replaced(layer: nn.TransformerEncoderLayer) -> bool:
    if type(layer.self_attn) is not nn.MultiheadAttention:  # modelzip's SplitAttention
        return True
    return not all(
        type(m) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
        for m in (layer.linear1, layer.linear2, layer.self_attn.out_proj)
    )


def keep_transformer_slow_paths(model: nn.Module) -> list[str]:
    """Turn the fused fast path off for every encoder layer (and encoder) with a replaced
    layer; returns the encoder layers' names. Idempotent: call it after any replacement."""
    changed: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoder):
            layers = [m for m in module.layers if isinstance(m, nn.TransformerEncoderLayer)]
            if any(_replaced(m) for m in layers):
                module.use_nested_tensor = False
        if isinstance(module, nn.TransformerEncoderLayer) and _replaced(module):
            if not getattr(module, _MARK, False):
                module.register_forward_pre_hook(_calls_its_modules)
                setattr(module, _MARK, True)
            changed.append(name)
    return changed
