"""``DynQuantLinear``: int8 weights, int8 activations quantized per token at run time.

What keeps sentence encoders faithful in int8: each row of the input (a token, for
``[batch, tokens, features]`` activations; any rank works, the last dimension is the features)
gets its own symmetric scale ``max|x_row| / 127``, computed on the fly, so an outlier token never
coarsens the grid of the others. Weights are symmetric int8 per output channel. An optional
SmoothQuant vector ``smooth`` (one value per input feature) divides the input before it is
quantized; the weight columns were multiplied by it before their grid was chosen, so the
product is unchanged while activation outliers move into the weights.

``asymmetric=True`` gives each row a zero point instead: the row's ``[min, max]`` (widened to
hold 0) on 256 levels, ``x ~ s_row * (q - z_row)`` with ``q`` in ``[0, 255]``. For one-sided
inputs (GELU outputs, the FFN's second matrix) that is twice the resolution of ``max|x| / 127``
(measured on MiniLM: +3 dB output SQNR there, +1 dB on the others). The kernel still multiplies
int8 codes ``q - 128``; the zero point comes back exactly as ``(128 - z_row) * sum_k W[n, k]``
added to the int32 products.

``act_bits=16`` is for the few layers whose int8 rows cost the most end-to-end accuracy (on
MiniLM the FFN's second matrices: their GELU inputs carry a handful of huge values): each row is
quantized twice, ``x ~ s (q1 + q2 / 254)`` with the second int8 codes on the first's rounding
residual, and both go through one int8 product of twice the rows, so the layer keeps integer
kernels at about 16-bit activation precision for twice its int8 GEMM time.

``rotate=b`` multiplies each block of ``b`` input features (after smoothing) by a Hadamard
matrix before the rows are quantized, and the weight columns by the same rotation before their
grid is chosen (``modelzip.nn.rotation``): the product is unchanged, and a token's outlier
feature is spread over its block, so its int8 step shrinks (on MiniLM this reaches the fidelity
of the 16-bit rows at one int8 pass per layer).

The int32 products come from ``modelzip.nn.int8_runtime.int8_mm`` (``torch._int_mm`` where it
is exact, its weight-split form on x86 CPUs without VNNI), then ``acc * s_row * s_w + bias``.

Layers fed the same tensor with the same smoothing and row kind (a transformer's query, key
and value, which the planner smooths alike for this) quantize it once: the first call keeps its
codes for the next (``shared_rows``), so eager, traced and exported forms all make the codes
once per input (measured on MiniLM: 12 fewer quantizations per sentence).

Buffers (what the .mzip stores): ``qweight`` int8 ``[out, in]``, ``w_scale`` ``[out]``, ``bias``
``[out]`` (optional), ``smooth`` ``[in]``. The packed weight (and, asymmetric, the weight's
row sums) are derived on first use.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modelzip.errors import FormatError
from modelzip.nn import int8_runtime, rotation
from modelzip.nn.specs import Buildable

MAX_WEIGHTS = 1 << 31


class _LastRows(threading.local):
    """The last row codes made in this thread, with what they were made from."""

    ref: Callable[[], Any] | None = None
    version = -1
    key: tuple[Any, ...] = ()
    rows: tuple[Any, ...] = ()


_LAST_ROWS = _LastRows()


def _version(x: torch.Tensor) -> int:
    try:
        return int(x._version)
    except RuntimeError:  # inference-mode tensors keep no version counter
        return -1


def shared_rows(
    x: torch.Tensor, key: tuple[Any, ...], make: Callable[[], tuple[Any, ...]]
) -> tuple[Any, ...]:
    """``make()``, or what it returned for the same tensor ``x`` (the same object, not changed
    in place since) and the same ``key`` in the call just before: the codes of an input that
    several layers read in a row are made once. Only the last call is kept (per thread), so
    nothing outlives the next layer's call."""
    last = _LAST_ROWS
    if last.ref is not None and last.ref() is x and last.key == key and last.version == _version(x):
        return last.rows
    rows = make()
    last.ref, last.key, last.version, last.rows = weakref.ref(x), key, _version(x), rows
    return rows


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of a 2-D float tensor, and the row scales ``[M, 1]``."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def quantize_rows_asym(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric uint8 codes of each row of a 2-D float tensor, stored as int8 ``q - 128``,
    with the row scales and zero points ``[M, 1]`` (``x ~ scale * (q - zero)``)."""
    lo = x.amin(dim=1, keepdim=True).clamp_max(0.0)
    hi = x.amax(dim=1, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    codes = (torch.round(x / scale) + (zero - 128.0)).clamp_(-128, 127).to(torch.int8)
    return codes, scale, zero


def quantize_rows16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int8 codes per value of a 2-D float tensor, stacked as ``[2M, K]`` (the codes, then
    the codes of their rounding residual on a 254 times finer grid), and the row scales."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    rows = x.shape[0]
    both = torch.empty((2 * rows, x.shape[1]), dtype=x.dtype)  # no cat: one buffer, filled
    t = torch.div(x, scale, out=both[rows:])  # in [-127, 127]: neither code needs clamping
    coarse = torch.round(t, out=both[:rows])
    t.sub_(coarse).mul_(254.0).round_()  # the residual is within half a step
    return both.to(torch.int8), scale


def fake_rows(x: torch.Tensor, asymmetric: bool = False, act_bits: int = 8) -> torch.Tensor:
    """The real values per-row int8 codes of ``x`` stand for (what the layer multiplies)."""
    if act_bits == 16:
        codes, scale = quantize_rows16(x)
        rows = x.shape[0]
        return (codes[:rows].float() + codes[rows:].float() / 254.0) * scale
    if asymmetric:
        codes, scale, zero = quantize_rows_asym(x)
        return (codes.float() + (128.0 - zero)) * scale
    codes, scale = quantize_rows(x)
    return codes.float() * scale


class DynQuantLinear(Buildable):
    """``nn.Linear`` with int8 weights and per-token dynamic int8 activations."""

    qweight: torch.Tensor
    w_scale: torch.Tensor
    bias: torch.Tensor | None
    smooth: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        asymmetric: bool = False,
        act_bits: int = 8,
        rotate: int = 0,
    ):
        super().__init__()
        if not isinstance(asymmetric, bool):
            raise ValueError(f"asymmetric must be true or false, got {asymmetric!r}")
        if act_bits not in (8, 16) or (act_bits == 16 and asymmetric):
            raise ValueError(f"act_bits must be 8, or 16 with symmetric rows; got {act_bits!r}")
        self.asymmetric, self.act_bits = asymmetric, act_bits
        if not all(isinstance(d, int) and d >= 1 for d in (in_features, out_features)) or (
            in_features * out_features > MAX_WEIGHTS
        ):
            raise ValueError(f"bad weight shape {(out_features, in_features)} for DynQuantLinear")
        self.in_features, self.out_features = in_features, out_features
        if not rotation.is_block(rotate) or (rotate and in_features % rotate):
            raise ValueError(
                f"rotate must be 0 or a power of two up to {rotation.MAX_BLOCK} that divides "
                f"in_features {in_features}; got {rotate!r}"
            )
        self.rotate = rotate
        self.register_buffer("qweight", torch.zeros((out_features, in_features), dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("smooth", torch.ones(in_features))
        self._packed: tuple[str, torch.Tensor] | None = None
        self._row_sums: torch.Tensor | None = None
        self._smooth_hash: int | None = None

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            **({"asymmetric": True} if self.asymmetric else {}),
            **({"act_bits": 16} if self.act_bits == 16 else {}),
            **({"rotate": self.rotate} if self.rotate else {}),
        }

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        smooth: torch.Tensor | None = None,
        codes: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        asymmetric: bool = False,
        act_bits: int = 8,
        rotate: int = 0,
        weight_bits: int = 8,
    ) -> DynQuantLinear:
        """Quantize a float weight (``[out, in]``) per output channel, after smoothing and
        rotating, on codes ``[-qmax, qmax]`` (``qmax`` 127 for ``weight_bits`` 8, 63 for 7: see
        ``modelzip.nn.int8_runtime.PAIR_SAFE``), or take ``codes`` (int8 ``[out, in]``, scales
        ``[out]``) already rounded (e.g. by GPTQ) for the smoothed, rotated weight."""
        if weight_bits not in (7, 8):
            raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
        out_f, in_f = weight.shape
        layer = cls(
            in_f,
            out_f,
            bias=bias is not None,
            asymmetric=asymmetric,
            act_bits=act_bits,
            rotate=rotate,
        )
        w = weight.detach().float()
        if smooth is not None:
            w = w * smooth.float()[None, :]
            layer.smooth.copy_(smooth.float())
        w = rotation.rotate(w, rotate)
        if codes is None:
            qmax = 2 ** (weight_bits - 1) - 1
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / qmax
            codes = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8), scale
        layer.qweight.copy_(codes[0])
        layer.w_scale.copy_(codes[1])
        if bias is not None:
            layer.bias.copy_(bias.detach().float())  # type: ignore[union-attr]  # bias=True
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The real weight this layer multiplies by (rotation and smoothing undone)."""
        w = self.qweight.float() * self.w_scale[:, None]
        return rotation.rotate(w, self.rotate) / self.smooth[None, :]

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
        exporting = torch.onnx.is_in_onnx_export()
        key = (
            exporting,
            self.asymmetric,
            self.act_bits,
            self.rotate,
            self.in_features,
            self._smooth_key(),
        )
        rows = shared_rows(x, key, lambda: self._row_codes(x, exporting))
        if exporting:
            from modelzip.nn.onnx_int8 import RowsMatMulOnnx

            b = self.bias if self.bias is not None else torch.zeros(self.out_features)
            sums = self.scaled_row_sums() if self.asymmetric else torch.zeros(0)
            w_t = self.qweight.t().contiguous()
            return RowsMatMulOnnx.apply(w_t, self.w_scale, b, sums, self._kind(), *rows)
        shape = x.shape
        kernel = int8_runtime.matmul_kernel()
        codes, s_row, zero = rows
        acc = int8_runtime.int8_mm(codes, self._packed_weight(kernel), kernel)
        if self.asymmetric:
            # the zero point, exactly in int32: sum (q - 128 + 128 - z) w = acc + (128 - z) sum w
            acc = torch.addr(acc, (128 - zero).to(torch.int32).view(-1), self.row_sums())
        elif self.act_bits == 16:
            n = codes.shape[0] // 2
            acc_f = torch.add(acc[:n].float(), acc[n:].float(), alpha=1.0 / 254.0)
            return self._epilogue(acc_f, s_row).reshape(*shape[:-1], self.out_features)
        return self._epilogue(acc.float(), s_row).reshape(*shape[:-1], self.out_features)

    def _kind(self) -> str:
        return "asym" if self.asymmetric else "int16" if self.act_bits == 16 else "int8"

    def _smooth_key(self) -> int:
        if self._smooth_hash is None:
            self._smooth_hash = hash(self.smooth.detach().numpy().tobytes())
        return self._smooth_hash

    def _row_codes(self, x: torch.Tensor, exporting: bool) -> tuple[Any, ...]:
        """The input's row codes and scales: ``(codes, s_row, zero or None)``; exporting, the
        ONNX nodes that make them (``modelzip.nn.onnx_int8.RowsOnnx``)."""
        smoothed = not bool((self.smooth == 1).all())
        if exporting:
            from modelzip.nn.onnx_int8 import RotateOnnx, RowsOnnx

            xs = x if x.dtype == torch.float32 else x.float()
            if smoothed:  # one Mul by a constant (made outside the trace, as the row sums are)
                xs = xs * torch.from_numpy(1.0 / self.smooth.detach().numpy())
            if self.rotate:  # Reshape, MatMul by the block's constant, Reshape
                h = rotation.hadamard(self.rotate).to(xs.dtype)
                xs = RotateOnnx.apply(xs, h, self.rotate)
            return tuple(RowsOnnx.apply(xs, self._kind()))
        x2 = x.reshape(-1, self.in_features).float()
        if smoothed:
            x2 = x2 / self.smooth
        x2 = rotation.rotate(x2, self.rotate)
        if self.asymmetric:
            return quantize_rows_asym(x2)
        if self.act_bits == 16:
            return (*quantize_rows16(x2), None)
        return (*quantize_rows(x2), None)

    def _epilogue(self, acc: torch.Tensor, s_row: torch.Tensor) -> torch.Tensor:
        """``acc * s_row * w_scale + bias`` on the float accumulator ``acc`` (a temporary: it
        is scaled in place), then the bias add fused into the multiply by ``w_scale``. The
        outer product ``s_row * w_scale`` is never made: measured on a ViT's ``[16640, 576]``
        output (batch 256), that one multiply and its ``[M, N]`` temporary cost 25% of the
        epilogue."""
        y = acc.mul_(s_row)
        if self.bias is None:
            return y.mul_(self.w_scale)
        return torch.addcmul(self.bias, y, self.w_scale)

    def row_sums(self) -> torch.Tensor:
        """``sum_k qweight[n, k]`` (int32 ``[out]``), for the asymmetric zero point."""
        if self._row_sums is None:
            # made outside any trace (numpy), so an export or a frozen form sees a constant:
            # traced, the sum exported an int64 copy of the weight (measured: +34 MB on MiniLM)
            sums = self.qweight.detach().numpy().astype("int32").sum(axis=1, dtype="int32")
            self._row_sums = torch.from_numpy(sums)
        return self._row_sums

    def scaled_row_sums(self) -> torch.Tensor:
        """``w_scale[n] * sum_k qweight[n, k]`` (float ``[out]``, a constant to a trace)."""
        sums = self.row_sums().numpy().astype("float32")
        return torch.from_numpy(sums * self.w_scale.detach().numpy())

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = self._row_sums = self._smooth_hash = None
        for name in ("w_scale", "smooth"):
            t = getattr(self, name)
            if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
                raise FormatError(f"DynQuantLinear {args[1]!r}: {name} must be finite and > 0")

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._packed = self._row_sums = self._smooth_hash = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = state["_row_sums"] = state["_smooth_hash"] = None
        return state

    def extra_repr(self) -> str:
        kind = "asymmetric" if self.asymmetric else "symmetric"
        kind += ", 16-bit rows (two int8 passes)" if self.act_bits == 16 else ""
        kind += f", Hadamard-rotated in blocks of {self.rotate}" if self.rotate else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kind}"


#: Calibration ranges below this share of the layer's median range are raised to it before
#: smoothing (see ``smooth_factors``).
UNSEEN_FLOOR = 0.1


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-feature divisor ``max|X_j|^a / max|W_j|^(1-a)`` (pure).

    A feature the calibration data left at (or near) zero, such as a ReLU output that none of
    its samples switched on, would get a divisor near zero and so be multiplied by thousands
    whenever a later input does switch it on: that one value then sets its row's int8 scale
    and the rest of the row rounds to zero (measured on LeNet-5 / Fashion-MNIST: 163 of the
    head's 500 inputs never fired on 512 calibration images, 4 fired on test images, and the
    head's accuracy fell 0.90 points at a calibration SQNR of 55 dB). So ranges are raised to
    at least ``UNSEEN_FLOOR`` times the layer's median range first: the median of the features
    the calibration did see, since in a ReLU network more than half of a layer's inputs may
    never fire on it (a diamonds-price MLP: the median range was 0, the floor 1e-5, and one unit
    that fired on a test row was divided by 0.00026; its row rounded to zero and R^2 fell 1.9
    points at a calibration SQNR of 41 dB).
    """
    w_max = weight.detach().abs().amax(dim=0).clamp_min(1e-5)
    seen = act_absmax[act_absmax > 0]
    floor = max(1e-5, UNSEEN_FLOOR * (float(seen.median()) if seen.numel() else 0.0))
    a_max = act_absmax.clamp_min(floor)
    s = a_max.pow(alpha) / w_max.pow(1 - alpha)
    s = s.clamp(1e-4, 1e4)
    return s if math.isfinite(float(s.sum())) else torch.ones_like(s)
