"""How modelzip's int8 layers appear in an ONNX graph (TorchScript exporter symbolics).

``DynQuantLinear`` becomes integer ops: per-row ``ReduceMax(|x|) / 127`` scales,
``Round``/``Clip`` to the codes, which go to ``MatMulInteger`` as uint8 ``q + 128`` with zero
point 128 (the same product as int8 x int8, on ONNX Runtime's fast uint8 x int8 GEMM: the
int8 x int8 form measured 3x slower there), then the int32 sum times both scales plus the
bias: the same arithmetic as the PyTorch layer. Asymmetric rows (a zero point per row) are
uint8 codes without a zero point, and the int32 sum minus ``z_row * sum_k W[n, k]``; 16-bit
rows are two such products (the codes and those of their rounding residual).
``QuantLinear`` / ``QuantConv2d`` become QDQ: the input and the per-channel weight pass
through ``QuantizeLinear``/``DequantizeLinear`` pairs with the layer's
scales and zero points around a float ``MatMul``/``Conv``, and the output through the output
grid; ONNX Runtime fuses such groups into its integer kernels.

Each ``apply`` computes the layer's result in PyTorch too (the exporter traces it for shapes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.onnx import symbolic_helper as sh


def _const(g: Any, t: torch.Tensor) -> Any:
    return g.op("Constant", value_t=t)


class DynLinearOnnx(torch.autograd.Function):
    """``x [M, K]`` -> float ``[M, N]`` through per-row int8 and ``MatMulInteger``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        q = torch.round(x / s).clamp(-127, 127)
        return (q @ w_t.float()) * s * w_scale + bias

    @staticmethod
    def symbolic(g: Any, x: Any, w_t: Any, w_scale: Any, bias: Any) -> Any:
        absmax = g.op("ReduceMax", g.op("Abs", x), axes_i=[1], keepdims_i=1)
        eps = _const(g, torch.tensor(1e-12))
        s = g.op("Div", g.op("Max", absmax, eps), _const(g, torch.tensor(127.0)))
        q = g.op("Round", g.op("Div", x, s))
        q = g.op("Clip", q, _const(g, torch.tensor(-127.0)), _const(g, torch.tensor(127.0)))
        q = _u8(g, g.op("Add", q, _const(g, torch.tensor(128.0))))
        acc = g.op("MatMulInteger", q, w_t, _const(g, torch.tensor(128, dtype=torch.uint8)))
        y = g.op("Mul", g.op("Cast", acc, to_i=sh.cast_pytorch_to_onnx["Float"]), s)
        return g.op("Add", g.op("Mul", y, w_scale), bias)


class DynLinear16Onnx(torch.autograd.Function):
    """``x [M, K]`` -> float ``[M, N]`` through two int8 codes per value (16-bit rows)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        from modelzip.nn.dynamic import fake_rows

        return (fake_rows(x, act_bits=16) @ w_t.float()) * w_scale + bias

    @staticmethod
    def symbolic(g: Any, x: Any, w_t: Any, w_scale: Any, bias: Any) -> Any:
        absmax = g.op("ReduceMax", g.op("Abs", x), axes_i=[1], keepdims_i=1)
        s = g.op("Max", absmax, _const(g, torch.tensor(1e-12)))
        s = g.op("Div", s, _const(g, torch.tensor(127.0)))
        lo, hi = _const(g, torch.tensor(-127.0)), _const(g, torch.tensor(127.0))
        t = g.op("Div", x, s)
        q1 = g.op("Clip", g.op("Round", t), lo, hi)
        q2 = g.op("Mul", g.op("Sub", t, q1), _const(g, torch.tensor(254.0)))
        q2 = g.op("Clip", g.op("Round", q2), lo, hi)
        off, zp = _const(g, torch.tensor(128.0)), _const(g, torch.tensor(128, dtype=torch.uint8))
        to_f = sh.cast_pytorch_to_onnx["Float"]
        a1 = g.op("Cast", g.op("MatMulInteger", _u8(g, g.op("Add", q1, off)), w_t, zp), to_i=to_f)
        a2 = g.op("Cast", g.op("MatMulInteger", _u8(g, g.op("Add", q2, off)), w_t, zp), to_i=to_f)
        acc = g.op("Add", a1, g.op("Div", a2, _const(g, torch.tensor(254.0))))
        return g.op("Add", g.op("Mul", g.op("Mul", acc, s), w_scale), bias)


class DynLinearAsymOnnx(torch.autograd.Function):
    """``x [M, K]`` -> float ``[M, N]`` through per-row asymmetric uint8 and ``MatMulInteger``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_t: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor,
        row_sums: torch.Tensor,
    ) -> torch.Tensor:
        from modelzip.nn.dynamic import quantize_rows_asym

        codes, s, zero = quantize_rows_asym(x)
        return ((codes.float() + (128.0 - zero)) @ w_t.float()) * s * w_scale + bias

    @staticmethod
    def symbolic(g: Any, x: Any, w_t: Any, w_scale: Any, bias: Any, row_sums: Any) -> Any:
        zero_f = _const(g, torch.tensor(0.0))
        lo = g.op("Min", g.op("ReduceMin", x, axes_i=[1], keepdims_i=1), zero_f)
        hi = g.op("Max", g.op("ReduceMax", x, axes_i=[1], keepdims_i=1), zero_f)
        s = g.op("Div", g.op("Sub", hi, lo), _const(g, torch.tensor(255.0)))
        s = g.op("Max", s, _const(g, torch.tensor(1e-12)))
        z = g.op("Round", g.op("Div", g.op("Neg", lo), s))
        q = g.op("Add", g.op("Round", g.op("Div", x, s)), z)
        q = _u8(g, g.op("Clip", q, zero_f, _const(g, torch.tensor(255.0))))
        acc = g.op("MatMulInteger", q, w_t)
        corr = g.op("Mul", g.op("Cast", z, to_i=sh.cast_pytorch_to_onnx["Int"]), row_sums)
        acc = g.op("Sub", acc, corr)
        y = g.op("Mul", g.op("Cast", acc, to_i=sh.cast_pytorch_to_onnx["Float"]), s)
        return g.op("Add", g.op("Mul", y, w_scale), bias)


def _u8(g: Any, zp: Any) -> Any:
    return g.op("Cast", zp, to_i=sh.cast_pytorch_to_onnx["Byte"])


def _s8(g: Any, zp: Any) -> Any:
    return g.op("Cast", zp, to_i=sh.cast_pytorch_to_onnx["Char"])


def _qdq(g: Any, x: Any, s: Any, zp: Any) -> Any:
    z = _u8(g, zp)
    return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


def _fq(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, float(s), int(zp), 0, 255)


def _deq(q: torch.Tensor, s: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (q.dim() - 1)
    return (q.float() - zp.float().reshape(shape)) * s.reshape(shape)


class QLinearOnnx(torch.autograd.Function):
    """A static ``QuantLinear`` as QDQ around ``MatMul`` + bias."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        in_s: torch.Tensor,
        in_zp: torch.Tensor,
        qweight: torch.Tensor,
        w_s: torch.Tensor,
        w_zp: torch.Tensor,
        bias: torch.Tensor,
        out_s: torch.Tensor,
        out_zp: torch.Tensor,
    ) -> torch.Tensor:
        y = F.linear(_fq(x, in_s, in_zp), _deq(qweight, w_s, w_zp), bias)
        return _fq(y, out_s, out_zp)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        in_s: Any,
        in_zp: Any,
        qw: Any,
        w_s: Any,
        w_zp: Any,
        b: Any,
        o_s: Any,
        o_zp: Any,
    ) -> Any:
        xq = _qdq(g, x, in_s, in_zp)
        w_t = g.op("Transpose", qw, perm_i=[1, 0])  # folded into an int8 [in, out] initializer
        w = g.op("DequantizeLinear", w_t, w_s, _s8(g, w_zp), axis_i=1)
        y = g.op("MatMul", xq, w)
        return _qdq(g, g.op("Add", y, b), o_s, o_zp)


class QConvOnnx(torch.autograd.Function):
    """A static ``QuantConv2d`` as QDQ around ``Conv``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        in_s: torch.Tensor,
        in_zp: torch.Tensor,
        qweight: torch.Tensor,
        w_s: torch.Tensor,
        w_zp: torch.Tensor,
        bias: torch.Tensor,
        out_s: torch.Tensor,
        out_zp: torch.Tensor,
        attrs: tuple[list[int], list[int], list[int], int],
    ) -> torch.Tensor:
        stride, padding, dilation, groups = attrs
        xd = _fq(x, in_s, in_zp)
        y = F.conv2d(xd, _deq(qweight, w_s, w_zp), bias, stride, padding, dilation, groups)
        return _fq(y, out_s, out_zp)

    @staticmethod
    def symbolic(
        g: Any,
        x: Any,
        in_s: Any,
        in_zp: Any,
        qw: Any,
        w_s: Any,
        w_zp: Any,
        b: Any,
        o_s: Any,
        o_zp: Any,
        attrs: tuple[list[int], list[int], list[int], int],
    ) -> Any:
        stride, padding, dilation, groups = attrs
        xq = _qdq(g, x, in_s, in_zp)
        w = g.op("DequantizeLinear", qw, w_s, _s8(g, w_zp), axis_i=0)
        y = g.op(
            "Conv",
            xq,
            w,
            b,
            strides_i=list(stride),
            pads_i=list(padding) * 2,
            dilations_i=list(dilation),
            group_i=groups,
        )
        return _qdq(g, y, o_s, o_zp)
