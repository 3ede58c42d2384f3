"""``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with their weight matrices as child layers.

A recurrent layer keeps its matrices as parameters (``weight_ih_l0``, ``weight_hh_l0``, ...) that
its fused kernel reads: no method that works on layers reached them, and an LSTM model came out of
every recipe only 1.2x smaller (its Linear head compressed, its LSTM not). ``SplitRNN`` holds each
matrix with its bias as a ``PackedWeight`` child (an ``nn.Linear`` that is read, never called) and
runs PyTorch's own recurrent module, a parameter-free template of the original, on their current
values: the same outputs, the same kernel, while pruning masks, quantization grids and codebooks
apply to the children as to any layer. Methods that would replace a child by another module (int8
kernels, low-rank factors) leave it, with the reason
(``modelzip.nn.fastpath.weight_read_directly``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from modelzip.nn.specs import Buildable

_KINDS: dict[str, Callable[..., nn.RNNBase]] = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
#: more stacked layers than any real network; a file naming more is refused before building
MAX_LAYERS = 1024
_PARAM = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


class PackedWeight(nn.Linear):
    """One matrix (and bias) of a recurrent layer, read by it, never called."""

    #: who reads ``weight`` directly (``weight_read_directly`` names it)
    read_by = "its recurrent layer (LSTM/GRU/RNN)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a PackedWeight is read by its recurrent layer, not called")


class SplitRNN(Buildable):
    """A recurrent layer whose matrices are ``PackedWeight`` children (same kernel, outputs)."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        nonlinearity: str = "tanh",
    ):
        super().__init__()
        if mode not in _KINDS:
            raise ValueError(f"unknown recurrent layer {mode!r}; valid: {', '.join(_KINDS)}")
        if not 1 <= num_layers <= MAX_LAYERS:  # a file's spec: building loops over layers
            raise ValueError(f"num_layers must be 1..{MAX_LAYERS}, got {num_layers}")
        kwargs: dict[str, Any] = {
            "num_layers": num_layers,
            "bias": bias,
            "batch_first": batch_first,
            "dropout": dropout,
            "bidirectional": bidirectional,
        }
        if mode == "LSTM":
            kwargs["proj_size"] = proj_size
        if mode == "RNN":
            kwargs["nonlinearity"] = nonlinearity
        template = _KINDS[mode](input_size, hidden_size, device="meta", **kwargs)
        # the template holds no values (meta tensors) and is not a child: nothing is stored
        object.__setattr__(self, "_template", template)
        self.spec = {"mode": mode, "input_size": input_size, "hidden_size": hidden_size, **kwargs}
        self.batch_first = batch_first
        self._names: dict[str, tuple[str, str | None]] = {}
        shapes = {n: p.shape for n, p in template.named_parameters()}
        for name, shape in shapes.items():
            m = _PARAM.match(name)
            if m is None or m.group(1) != "weight":
                continue
            child = f"{m.group(2)}_l{m.group(3)}{m.group(4) or ''}"
            bias_name = f"bias_{child}"
            has_bias = bias_name in shapes
            self._names[child] = (name, bias_name if has_bias else None)
            self.add_module(child, PackedWeight(shape[1], shape[0], bias=has_bias))

    @classmethod
    def from_rnn(cls, rnn: nn.RNNBase) -> SplitRNN:
        """The same recurrent layer, its matrices copied into child layers."""
        extra: dict[str, Any] = {}
        if isinstance(rnn, nn.LSTM):
            extra["proj_size"] = rnn.proj_size
        if type(rnn) is nn.RNN:
            extra["nonlinearity"] = rnn.nonlinearity
        out = cls(
            type(rnn).__name__,
            rnn.input_size,
            rnn.hidden_size,
            rnn.num_layers,
            rnn.bias,
            rnn.batch_first,
            float(rnn.dropout),
            rnn.bidirectional,
            **extra,
        )
        with torch.no_grad():
            for child, (weight, bias) in out._names.items():
                layer = cast(PackedWeight, out.get_submodule(child))
                layer.weight.copy_(cast(torch.Tensor, getattr(rnn, weight)).detach())
                if bias is not None:
                    layer.bias.copy_(cast(torch.Tensor, getattr(rnn, bias)).detach())
        device = next(rnn.parameters()).device
        return out.to(device).train(rnn.training)

    def to_spec(self) -> dict[str, Any]:
        return dict(self.spec)

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        params: dict[str, torch.Tensor] = {}
        for child, (weight, bias) in self._names.items():
            layer = self.get_submodule(child)
            params[weight] = cast(torch.Tensor, layer.weight)  # under any mask or grid
            if bias is not None:
                params[bias] = cast(torch.Tensor, layer.bias)
        template = cast(nn.RNNBase, self.__dict__["_template"])
        template.train(self.training)  # dropout between stacked layers while training
        # RNNBase.forward hands its _flat_weights list to the kernel: give it the children's
        # values for this call (torch.func.functional_call would too, but TorchScript tracing,
        # which the ONNX export and the frozen form use, refuses it), then the meta ones back
        meta = template._flat_weights
        template._flat_weights = [params[n] for n in template._flat_weights_names]
        try:
            return template(input) if hx is None else template(input, hx)
        finally:
            template._flat_weights = meta


def why_not_split(rnn: nn.RNNBase) -> str | None:
    """None when ``SplitRNN`` runs ``rnn`` exactly, else the reason it cannot."""
    if type(rnn) not in _KINDS.values():
        return f"{type(rnn).__name__} is a subclass of a recurrent layer (its own forward)"
    if any(p.is_meta for p in rnn.parameters()):
        return "its parameters hold no values (meta device)"
    return None


def split_recurrent(model: nn.Module) -> dict[str, str]:
    """Replace every ``nn.LSTM``/``nn.GRU``/``nn.RNN`` by a ``SplitRNN``; returns
    ``{name: "split" or the reason it was left}``."""
    done: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.RNNBase) or not name:
            continue
        reason = why_not_split(module)
        done[name] = reason or "split"
        if reason is None:
            model.set_submodule(name, SplitRNN.from_rnn(module))
    return done
