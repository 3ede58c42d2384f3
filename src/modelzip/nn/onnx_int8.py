"""How modelzip's int8 layers appear in an ONNX graph (TorchScript exporter symbolics).

``DynQuantLinear`` becomes integer ops in two parts. ``RowsOnnx`` makes the row codes: per-row
scales ``max|x| / 127`` and one ``QuantizeLinear`` to uint8 ``q + 128`` (layers that read one
input in a row, a transformer's query, key and value, share this part). ``RowsMatMulOnnx``
multiplies them in ONNX Runtime's ``MatMulIntegerToFloat`` with zero point 128 (the same product
as int8 x int8, on ORT's fast uint8 x int8 GEMM: the int8 x int8 form measured 3x slower there),
times both scales, plus the bias: the same arithmetic as the PyTorch layer. Asymmetric rows (a
zero point per row) add their zero point's share ``s (128 - z) * w_scale * sum_k W[n, k]``;
16-bit rows are two such products (the codes and those of their rounding residual). After the
export, ``modelzip.nn.onnx_merge`` joins the products that read the same codes into one.
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

MATMUL_TO_FLOAT = "com.microsoft::MatMulIntegerToFloat"
"""ONNX Runtime's integer matmul with a float epilogue (its contrib domain, version 1)."""


def _const(g: Any, t: torch.Tensor) -> Any:
    return g.op("Constant", value_t=t)


class RotateOnnx(torch.autograd.Function):
    """``modelzip.nn.rotation.rotate(x, b)`` for the Hadamard block ``h`` (``b x b``) as four
    nodes: ``Reshape`` to ``[-1, b]`` (every block a row), one 2-D ``MatMul`` by ``h``, and
    ``Reshape`` back to ``Shape(x)``. Traced, each rotation exported ten shape nodes
    (``Shape`` / ``Gather`` / ``Unsqueeze`` / ``Concat``) around a 4-D ``MatMul``, which measured
    20% of MiniLM's int8 time at batch 1 in ONNX Runtime. ``h`` is an input, not a tensor the
    forward reads (the tracer fails on one tensor read inside two calls of a Function).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h: torch.Tensor, b: int) -> torch.Tensor:
        from modelzip.nn.rotation import rotate

        return rotate(x, b, h)

    @staticmethod
    def symbolic(g: Any, x: Any, h: Any, b: int) -> Any:
        blocks = g.op("Reshape", x, _const(g, torch.tensor([-1, b])))
        return g.op("Reshape", g.op("MatMul", blocks, h), g.op("Shape", x))


class RowsOnnx(torch.autograd.Function):
    """Per-row codes of ``x [..., K]`` (already smoothed), for ``RowsMatMulOnnx``: the uint8
    codes and the row scales, then what the kind adds. ``kind`` is ``"int8"`` (-> codes
    ``q + 128``, scales ``max|x_row| / 127``), ``"int16"`` (-> those two, the codes of their
    rounding residual and its scales, 254 times finer) or ``"asym"`` (-> codes ``q`` of the
    row's ``[min, max]``, scales, and the zero point's share ``s * (128 - z)``).

    The graph is kept short, since at batch 1 each node's fixed cost adds up (measured on
    MiniLM in ONNX Runtime: the int8 matmuls were 28% of the time, the elementwise and shape
    nodes around them the rest). Rows stay N-D (``MatMulInteger`` broadcasts over leading
    dimensions, so no reshape chain); one ``QuantizeLinear`` with scale 1 makes the codes
    from values already on the grid (it rounds half to even and saturates, as the layer's
    ``round``/``clamp`` do).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
        if kind == "asym":
            lo = x.amin(dim=-1, keepdim=True).clamp_max(0.0)
            hi = x.amax(dim=-1, keepdim=True).clamp_min(0.0)
            s = ((hi - lo) / 255.0).clamp_min(1e-12)
            z = torch.round(-lo / s)
            q = (torch.round(x / s) + z).clamp(0, 255).to(torch.uint8)
            return q, s, s * (128.0 - z)
        s = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
        t = x / s
        q = torch.round(t)
        if kind == "int16":
            q2 = torch.round((t - q) * 254.0)
            return (q + 128).to(torch.uint8), s, (q2 + 128).to(torch.uint8), s / 254.0
        return (q + 128).to(torch.uint8), s

    @staticmethod
    def symbolic(g: Any, x: Any, kind: str) -> Any:
        one = _const(g, torch.tensor(1.0))
        if kind == "asym":
            zero_f = _const(g, torch.tensor(0.0))
            lo = g.op("Min", g.op("ReduceMin", x, axes_i=[-1], keepdims_i=1), zero_f)
            hi = g.op("Max", g.op("ReduceMax", x, axes_i=[-1], keepdims_i=1), zero_f)
            s = g.op("Div", g.op("Sub", hi, lo), _const(g, torch.tensor(255.0)))
            s = g.op("Max", s, _const(g, torch.tensor(1e-12)))
            # -z, with no Neg node: rounding half to even is odd-symmetric, so round(lo / s)
            # is exactly -round(-lo / s)
            neg_z = g.op("Round", g.op("Div", lo, s))
            t = g.op("Sub", g.op("Div", x, s), neg_z)
            q = g.op("QuantizeLinear", t, one, _const(g, torch.tensor(0, dtype=torch.uint8)))
            # the zero point's share per row, for ``RowsMatMulOnnx``: s * (128 - z)
            return q, s, g.op("Mul", s, g.op("Add", _const(g, torch.tensor(128.0)), neg_z))
        zp = _const(g, torch.tensor(128, dtype=torch.uint8))
        absmax = g.op("ReduceMax", g.op("Abs", x), axes_i=[-1], keepdims_i=1)
        absmax = g.op("Max", absmax, _const(g, torch.tensor(1e-12)))
        s = g.op("Div", absmax, _const(g, torch.tensor(127.0)))
        t = g.op("Div", x, s)  # in [-127, 127]
        q = g.op("QuantizeLinear", t, one, zp)
        if kind == "int16":  # the codes of the rounding residual, on a 254x finer grid
            r = g.op("Sub", t, g.op("DequantizeLinear", q, one, zp))
            q2 = g.op("QuantizeLinear", g.op("Mul", r, _const(g, torch.tensor(254.0))), one, zp)
            return q, s, q2, g.op("Div", s, _const(g, torch.tensor(254.0)))
        return q, s


class RowsMatMulOnnx(torch.autograd.Function):
    """``RowsOnnx`` codes times int8 weights ``w_t [K, N]``, to the float output ``[..., N]``:
    one ``MatMulIntegerToFloat`` (ONNX Runtime's contrib op: the integer product with zero
    point 128, times the row scales ``[..., 1]`` and the weight scales ``[N]``; a row-scale
    input of that shape is broadcast, measured exact), then the bias: the same arithmetic as
    the PyTorch layer in two nodes instead of five. Asymmetric rows add their zero point's share,
    ``s * (128 - z)`` per row times ``w_scale * sum_k W[n, k]`` per column (``scaled_sums``)."""

    @staticmethod
    def forward(
        ctx: Any,
        w_t: torch.Tensor,
        w_scale: torch.Tensor,
        bias: torch.Tensor,
        scaled_sums: torch.Tensor,
        kind: str,
        *rows: torch.Tensor,
    ) -> torch.Tensor:
        w = w_t.float()
        y = ((rows[0].float() - 128) @ w) * rows[1] * w_scale + bias
        if kind == "asym":
            return y + rows[2] * scaled_sums
        if kind == "int16":
            return y + ((rows[2].float() - 128) @ w) * rows[3] * w_scale
        return y

    @staticmethod
    def symbolic(
        g: Any, w_t: Any, w_scale: Any, bias: Any, scaled_sums: Any, kind: str, *rows: Any
    ) -> Any:
        zp = _const(g, torch.tensor(128, dtype=torch.uint8))
        w_zp = _const(g, torch.tensor(0, dtype=torch.int8))

        def product(codes: Any, scale: Any) -> Any:
            # (the bias is added outside: given per-row scales, ONNX Runtime (1.32) adds its
            # bias input before multiplying by them, measured: (acc * w_scale + bias) * s_row)
            y = g.op(MATMUL_TO_FLOAT, codes, w_t, scale, w_scale, zp, w_zp)
            return _typed_like(y, codes, sh._get_tensor_dim_size(w_t, 1))

        y = product(rows[0], rows[1])
        if kind == "asym":  # the zero point's share: a row term times a column constant
            y = g.op("Add", y, g.op("Mul", rows[2], scaled_sums))
        if kind == "int16":  # the residual's codes, on their finer scales
            y = g.op("Add", y, product(rows[2], rows[3]))
        return g.op("Add", y, bias)


def _typed_like(y: Any, x: Any, last: int | None) -> Any:
    """``y`` typed float with ``x``'s rank and last dimension ``last``: a contrib op has no
    ONNX shape inference, and ONNX Runtime's fusions after it (the residual add and
    LayerNorm into SkipLayerNormalization) need its output's rank and feature size."""
    rank = sh._get_tensor_rank(x)
    if rank is not None:
        y.setType(x.type().with_dtype(torch.float32).with_sizes([None] * (rank - 1) + [last]))
    return y


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
