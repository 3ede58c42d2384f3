"""Integer-kernel layers: W8A8 Linear and Conv2d that run PyTorch's quantized CPU engine.

Each layer keeps its int8 weight codes, per-channel weight scales and zero points, fp32 bias and
the activation qparams of its input and output as *buffers*, so the .mzip stores exactly
those tensors and rebuilds the layer from its JSON spec (``Buildable``) without pickle. The
engine's packed weight is derived from the buffers on first use (and again after a
state_dict load), never stored.

Data flow: a float input is quantized to uint8 with (``in_scale``, ``in_zero_point``); a
quantized input whose qparams match is used as it is (``modelzip.quant.convert`` chains
consecutive layers that way inside ``nn.Sequential``). The kernel accumulates in int32 and
requantizes to (``out_scale``, ``out_zero_point``); ``out_float`` layers return fp32.

Exactness on every CPU: ``modelzip.nn.int8_runtime`` decides in each process whether the engine's
kernels are exact on this CPU (x86 with AVX-512 VNNI, or qnnpack); where they could saturate (x86
without VNNI, e.g. AVX2-only AMD EPYC) a layer with 7-bit weights (codes within
``int8_runtime.PAIR_SAFE``, which cannot saturate) still runs them, and any other layer computes
its fake-quant reference in fp32 on the dequantized codes instead: same results, no int8
speed-up. Nothing about that choice is stored.

Kernel choice (measured on this project's CPU, 1 thread, LeNet-5 shapes): the ``x86`` engine
(fbgemm + oneDNN; torch's default on x86) ran fc 800x500 at 0.81x (b1) and 0.35x (b256) the
fp32 time and conv 20->50 5x5 at 0.33x / 0.15x; ``qnnpack`` was 3-4x slower than fp32 and
``onednn`` alone slower at batch 1. The layers use whatever engine is current (they never
flip that global setting) and repack if it changes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import FormatError
from modelzip.nn import int8_runtime
from modelzip.nn.specs import Buildable

#: Largest weight (elements) a spec may ask for, as the container's per-tensor limit.
MAX_WEIGHTS = 1 << 31
#: torch 2.13 warns (once per process) that quantized-tensor constructors are deprecated in
#: favour of torchao, which is not a dependency here; the kernels are what we need.
_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel"


class _QuantBase(Buildable):
    """Buffers and packing shared by the integer layers."""

    qweight: torch.Tensor
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    bias: torch.Tensor | None
    in_scale: torch.Tensor
    in_zero_point: torch.Tensor
    out_scale: torch.Tensor
    out_zero_point: torch.Tensor
    out_float: bool

    def _init_buffers(self, out_ch: int, w_shape: tuple[int, ...], bias: bool) -> None:
        # Specs come from files: refuse nonsense sizes before allocating anything.
        if (
            not all(isinstance(d, int) and d >= 1 for d in w_shape)
            or math.prod(w_shape) > MAX_WEIGHTS
        ):
            raise ValueError(f"bad weight shape {w_shape} for {type(self).__name__}")
        self.register_buffer("qweight", torch.zeros(w_shape, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_ch))
        self.register_buffer("w_zero_point", torch.zeros(out_ch, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out_ch) if bias else None)
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("in_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("out_scale", torch.ones(()))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int32))
        self._packed: Any = None
        self._max_code: int | None = None

    # --- filled by modelzip.quant.convert ------------------------------------------------
    @torch.no_grad()
    def set_weight(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> None:
        """Store int8 codes with one scale and zero point per output channel."""
        out = self.qweight.shape[0]
        self.qweight.copy_(codes.to(torch.int8).reshape(self.qweight.shape))
        self.w_scale.copy_(scale.float().reshape(-1).expand(out))
        self.w_zero_point.copy_(zero_point.round().to(torch.int32).reshape(-1).expand(out))
        self._packed = self._max_code = None

    @torch.no_grad()
    def set_qparams(self, in_qparams: tuple[float, int], out_qparams: tuple[float, int]) -> None:
        """Input and output activation scale / zero point (uint8 codes)."""
        self.in_scale.fill_(float(in_qparams[0]))
        self.in_zero_point.fill_(int(in_qparams[1]))
        self.out_scale.fill_(float(out_qparams[0]))
        self.out_zero_point.fill_(int(out_qparams[1]))
        self._packed = None

    # --- what counting and the packer see -------------------------------------------------
    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.qweight.dim() - 1)
        zp = self.w_zero_point.float().reshape(shape)
        return (self.qweight.float() - zp) * self.w_scale.reshape(shape)

    def stored_weights(self) -> dict[str, torch.Tensor]:
        """Weights as real values (for parameter counts and sizes)."""
        out = {"weight": self.dequantized_weight()}
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out

    # --- packing ---------------------------------------------------------------------------
    def uses_engine(self) -> bool:
        """Whether this layer runs the engine's int8 kernels here: where they are exact for its
        codes (``int8_runtime.engine_exact_for``: every CPU with VNNI, and 7-bit weights on
        CPUs without), else the exact fp32 reference."""
        if self._max_code is None:
            self._max_code = int(self.qweight.to(torch.int16).abs().max())
        return int8_runtime.engine_exact_for(self._max_code)

    def _qweight_tensor(self) -> torch.Tensor:
        return torch._make_per_channel_quantized_tensor(
            self.qweight, self.w_scale.double(), self.w_zero_point.long(), 0
        )

    def _prepack(self) -> Any:
        raise NotImplementedError

    def packed(self) -> tuple[Any, float, int, float, int]:
        """(engine's packed weight, in scale, in zp, out scale, out zp), cached per engine."""
        engine = torch.backends.quantized.engine
        if self._packed is None or self._packed[0] != engine:
            qp = (
                float(self.in_scale),
                int(self.in_zero_point),
                float(self.out_scale),
                int(self.out_zero_point),
            )
            with warnings.catch_warnings():  # the once-per-process notice fires here
                warnings.filterwarnings("ignore", message=_DEPRECATION, category=UserWarning)
                self._packed = (engine, self._prepack(), *qp)
        return self._packed[1:]

    def reference_weight(self) -> torch.Tensor:
        """The dequantized fp32 weight the reference path multiplies by (cached)."""
        if self._packed is None or self._packed[0] != "reference":
            self._packed = ("reference", self.dequantized_weight())
        return cast(torch.Tensor, self._packed[1])

    def _reference_input(self, x: torch.Tensor) -> torch.Tensor:
        """The real values of the layer's uint8 input codes, as the engine would see them."""
        s, zp = float(self.in_scale), int(self.in_zero_point)
        if x.is_quantized:
            if x.q_scale() == s and x.q_zero_point() == zp:
                return x.dequantize()
            x = x.dequantize()
        return torch.fake_quantize_per_tensor_affine(x.float(), s, zp, 0, 255)

    def _reference_output(self, y: torch.Tensor) -> torch.Tensor:
        """Round to the output grid as the engine's requantization does."""
        s, zp = float(self.out_scale), int(self.out_zero_point)
        if self.out_float:
            return torch.fake_quantize_per_tensor_affine(y, s, zp, 0, 255)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATION, category=UserWarning)
            return torch.quantize_per_tensor(y, s, zp, torch.quint8)

    def _onnx_args(self) -> tuple[torch.Tensor, ...]:
        bias = self.bias if self.bias is not None else torch.zeros(self.w_scale.shape)
        return (
            self.in_scale,
            self.in_zero_point,
            self.qweight,
            self.w_scale,
            self.w_zero_point,
            bias,
            self.out_scale,
            self.out_zero_point,
        )

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = self._max_code = None  # rebuilt from the loaded buffers on first use
        problem = self.check_qparams()
        if problem is not None:  # values from a file reach C++ kernels: refuse bad ones here
            raise FormatError(f"{type(self).__name__} {args[1]!r}: {problem}")

    def check_qparams(self) -> str | None:
        """None when scales and zero points are usable by the kernels, else what is wrong."""
        for name in ("w_scale", "in_scale", "out_scale"):
            t = getattr(self, name)
            if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
                return f"{name} must be finite and > 0"
        if bool((self.w_zero_point.abs() > 128).any()):
            return "w_zero_point must lie in the int8 range"
        for name in ("in_zero_point", "out_zero_point"):
            if not 0 <= int(getattr(self, name)) <= 255:
                return f"{name} must lie in the uint8 range 0..255"
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = state["_max_code"] = None  # derived, never copied or pickled
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._packed = self._max_code = None
        return super()._apply(fn, recurse)

    # --- run -------------------------------------------------------------------------------
    @staticmethod
    def _quantize_input(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        if x.is_quantized:
            if x.q_scale() == scale and x.q_zero_point() == zp:
                return x
            x = x.dequantize()
        return torch.quantize_per_tensor(x.float(), scale, zp, torch.quint8)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return y.dequantize() if self.out_float else y


class QuantLinear(_QuantBase):
    """``nn.Linear`` with int8 weights and uint8 activations on the quantized CPU engine."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, out_float: bool = True
    ):
        super().__init__()
        self.in_features, self.out_features, self.out_float = in_features, out_features, out_float
        self._init_buffers(out_features, (out_features, in_features), bias)

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "out_float": self.out_float,
        }

    def _prepack(self) -> Any:
        return torch.ops.quantized.linear_prepack(self._qweight_tensor(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # QDQ nodes (modelzip.nn.onnx_int8)
            from modelzip.nn.onnx_int8 import QLinearOnnx

            return QLinearOnnx.apply(x.float(), *self._onnx_args())
        if not self.uses_engine():
            w = self.reference_weight()
            return self._reference_output(F.linear(self._reference_input(x), w, self.bias))
        packed, in_s, in_zp, out_s, out_zp = self.packed()
        y = torch.ops.quantized.linear(self._quantize_input(x, in_s, in_zp), packed, out_s, out_zp)
        return self._finish(y)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class QuantConv2d(_QuantBase):
    """``nn.Conv2d`` (zero padding) with int8 weights and uint8 activations."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] | list[int],
        stride: tuple[int, int] | list[int] = (1, 1),
        padding: tuple[int, int] | list[int] = (0, 0),
        dilation: tuple[int, int] | list[int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        out_float: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(k) for k in stride)
        self.padding = tuple(int(k) for k in padding)
        self.dilation = tuple(int(k) for k in dilation)
        self.out_float = out_float
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_buffers(out_channels, shape, bias)

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "out_float": self.out_float,
        }

    def _prepack(self) -> Any:
        return torch.ops.quantized.conv2d_prepack(
            self._qweight_tensor(),
            self.bias,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # QDQ nodes (modelzip.nn.onnx_int8)
            from modelzip.nn.onnx_int8 import QConvOnnx

            attrs = (list(self.stride), list(self.padding), list(self.dilation), self.groups)
            return QConvOnnx.apply(x.float(), *self._onnx_args(), attrs)
        if not self.uses_engine():
            xd, w = self._reference_input(x), self.reference_weight()
            y = F.conv2d(xd, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return self._reference_output(y)
        packed, in_s, in_zp, out_s, out_zp = self.packed()
        y = torch.ops.quantized.conv2d(self._quantize_input(x, in_s, in_zp), packed, out_s, out_zp)
        return self._finish(y)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, int8"
        )
