"""``DynQuantLinear``: int8 weights, int8 activations quantized per token at run time.

What keeps sentence encoders faithful in int8: each row of the input (a token, for
``[batch, tokens, features]`` activations; any rank works, the last dimension is the features)
gets its own symmetric scale ``max|x_row| / 127``, computed on the fly, so an outlier token never
coarsens the grid of the others. Weights are symmetric int8 per output channel. An optional
SmoothQuant vector ``smooth`` (one value per input feature) divides the input before it is
quantized; the weight columns were multiplied by it before their grid was chosen, so the
product is unchanged while activation outliers move into the weights.

The int32 products come from ``modelzip.nn.int8_runtime.int8_mm`` (``torch._int_mm`` where it
is exact, its weight-split form on x86 CPUs without VNNI), then ``acc * s_row * s_w + bias``.

Buffers (what the .mzip stores): ``qweight`` int8 ``[out, in]``, ``w_scale`` ``[out]``, ``bias``
``[out]`` (optional), ``smooth`` ``[in]``. The packed weight is derived on first use.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from modelzip.errors import FormatError
from modelzip.nn import int8_runtime
from modelzip.nn.specs import Buildable

MAX_WEIGHTS = 1 << 31


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of a 2-D float tensor, and the row scales ``[M, 1]``."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
    return codes, scale


class DynQuantLinear(Buildable):
    """``nn.Linear`` with int8 weights and per-token dynamic int8 activations."""

    qweight: torch.Tensor
    w_scale: torch.Tensor
    bias: torch.Tensor | None
    smooth: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if not all(isinstance(d, int) and d >= 1 for d in (in_features, out_features)) or (
            in_features * out_features > MAX_WEIGHTS
        ):
            raise ValueError(f"bad weight shape {(out_features, in_features)} for DynQuantLinear")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros((out_features, in_features), dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("smooth", torch.ones(in_features))
        self._packed: tuple[str, torch.Tensor] | None = None

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, smooth: torch.Tensor | None = None
    ) -> DynQuantLinear:
        """Quantize a float weight (``[out, in]``) per output channel, after smoothing."""
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias=bias is not None)
        w = weight.detach().float()
        if smooth is not None:
            w = w * smooth.float()[None, :]
            layer.smooth.copy_(smooth.float())
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        layer.qweight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        layer.w_scale.copy_(scale)
        if bias is not None:
            layer.bias.copy_(bias.detach().float())  # type: ignore[union-attr]  # bias=True
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The real weight this layer multiplies by (smoothing undone)."""
        return self.qweight.float() * self.w_scale[:, None] / self.smooth[None, :]

    def stored_weights(self) -> dict[str, torch.Tensor]:
        """Weights as real values (for parameter counts and sizes)."""
        out = {"weight": self.dequantized_weight()}
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out

    def _packed_weight(self, kernel: str) -> torch.Tensor:
        if self._packed is None or self._packed[0] != kernel:
            self._packed = (kernel, int8_runtime.pack_weight(self.qweight, kernel))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if not bool((self.smooth == 1).all()):
            x2 = x2 / self.smooth
        if torch.onnx.is_in_onnx_export():
            from modelzip.nn.onnx_int8 import DynLinearOnnx

            b = self.bias if self.bias is not None else torch.zeros(self.out_features)
            w_t = self.qweight.t().contiguous()
            y = DynLinearOnnx.apply(x2, w_t, self.w_scale, b)
            return y.reshape(*shape[:-1], self.out_features)
        codes, s_row = quantize_rows(x2)
        kernel = int8_runtime.matmul_kernel()
        acc = int8_runtime.int8_mm(codes, self._packed_weight(kernel), kernel)
        y = acc.float() * (s_row * self.w_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None
        for name in ("w_scale", "smooth"):
            t = getattr(self, name)
            if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
                raise FormatError(f"DynQuantLinear {args[1]!r}: {name} must be finite and > 0")

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-feature divisor ``max|X_j|^a / max|W_j|^(1-a)`` (pure)."""
    w_max = weight.detach().abs().amax(dim=0).clamp_min(1e-5)
    a_max = act_absmax.clamp_min(1e-5)
    s = a_max.pow(alpha) / w_max.pow(1 - alpha)
    s = s.clamp(1e-4, 1e4)
    return s if math.isfinite(float(s.sum())) else torch.ones_like(s)
