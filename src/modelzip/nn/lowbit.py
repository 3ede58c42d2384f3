"""Fixed low-bit group-wise codes as a weight constraint (what ``gptq`` leaves on a layer).

Unlike ``AffineQuant``, whose grid follows the current weights, ``GroupCodes`` holds the codes
an algorithm chose (GPTQ's codes are not the nearest grid points of the float weights), so the
weight *is* ``(qdata - zero_point) * scale`` per (row, group), optionally divided by per-input
channel scales ``in_scale`` (AWQ). Conv kernels are viewed as (out, in * kh * kw). The stored
scales are fp16-exact, so the packer keeps them in 16 bits losslessly; the loader rebuilds the
fp32 weight once (dequantize on load), so the loaded model runs at fp32 speed.

Example:
    >>> codes = ops.gptq.rtn(torch.randn(4, 64), bits=4, group_size=32)
    >>> c = GroupCodes.from_codes(codes, bits=4, shape=(4, 64))
    >>> torch.equal(c(torch.empty(0)), codes.w_hat)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from modelzip.errors import FormatError
from modelzip.nn.constraints import Constraint, Encoded
from modelzip.ops import gptq as ops


def _value(
    qdata: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    in_scale: torch.Tensor | None,
) -> torch.Tensor:
    w = ops.dequantize_grouped(qdata.reshape(qdata.shape[0], -1), scale, zero)
    if in_scale is not None:
        w = w / in_scale.float()
    return w.reshape(qdata.shape)


def _expand(zero: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Each group's zero point repeated over its inputs, shaped like ``q``'s 2-D view."""
    rows = q.shape[0]
    cols = q[0].numel()
    return zero.to(torch.int16).repeat_interleave(cols // zero.shape[1], dim=1).reshape(rows, cols)


def center(q: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes as stored: ``(q - zero_point) mod 2^bits``. Weights cluster around zero, which
    every group's grid puts at its own zero point; relative to it the codes of all groups
    share one peaked distribution (a shorter entropy code than the raw codes, whose peak
    moves with the zero point). Exact and invertible (``uncenter``)."""
    flat = q.reshape(q.shape[0], -1).to(torch.int16)
    out = (flat - _expand(zero, q)) % (1 << bits)
    return out.to(torch.uint8).reshape(q.shape)


def uncenter(c: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``center``."""
    flat = c.reshape(c.shape[0], -1).to(torch.int16)
    out = (flat + _expand(zero, c)) % (1 << bits)
    return out.to(torch.uint8).reshape(c.shape)


class GroupCodes(Constraint):
    """The weight is its stored group-wise codes (the input tensor is ignored)."""

    kind = "group-codes"
    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    in_scale: torch.Tensor | None

    def __init__(
        self,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        *,
        bits: int,
        in_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("qdata", qdata.to(torch.uint8))
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.to(torch.uint8))
        self.register_buffer("in_scale", None if in_scale is None else in_scale.float())
        self._check(self.qdata, self.scale, self.zero_point, self.in_scale, bits)

    @classmethod
    def from_codes(
        cls,
        codes: ops.Codes,
        *,
        bits: int,
        shape: tuple[int, ...],
        in_scale: torch.Tensor | None = None,
    ) -> GroupCodes:
        """Wrap ``ops.gptq`` codes of the 2-D view of a weight of ``shape``."""
        return cls(
            codes.qdata.reshape(shape),
            codes.scale,
            codes.zero_point,
            bits=bits,
            in_scale=in_scale,
        )

    @staticmethod
    def _check(
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        in_scale: torch.Tensor | None,
        bits: int,
    ) -> None:
        if q.dim() < 2 or scale.dim() != 2 or zero.shape != scale.shape:
            raise FormatError(
                f"group codes: qdata {tuple(q.shape)}, scale {tuple(scale.shape)} and "
                f"zero_point {tuple(zero.shape)} do not fit together"
            )
        cols = q[0].numel()
        if scale.shape[0] != q.shape[0] or not 0 < scale.shape[1] <= cols:
            raise FormatError(f"group codes: scale {tuple(scale.shape)} does not fit {cols} inputs")
        if cols % scale.shape[1]:
            raise FormatError(f"group codes: {scale.shape[1]} groups do not divide {cols} inputs")
        if in_scale is not None and in_scale.shape != (cols,):
            raise FormatError(f"group codes: in_scale {tuple(in_scale.shape)} is not ({cols},)")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise FormatError(f"group codes: bits must be 1..8, got {bits!r}")
        if q.numel() and int(q.max()) >= 2**bits:
            raise FormatError(f"group codes: a code exceeds {bits} bits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _value(self.qdata, self.scale, self.zero_point, self.in_scale)
        return w.to(x.dtype) if x.is_floating_point() else w

    def encode(self, x: torch.Tensor) -> Encoded:
        fields = {
            "qdata": center(self.qdata, self.zero_point, self.bits),
            "scale": self.scale.clone(),
            "zero_point": self.zero_point.clone(),
        }
        if self.in_scale is not None:
            fields["in_scale"] = self.in_scale.clone()
        return Encoded(self.kind, fields, {"bits": self.bits, "centered": True})

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        try:
            q, scale, zero = fields["qdata"], fields["scale"], fields["zero_point"]
        except KeyError as exc:
            raise FormatError(f"group codes need field {exc}") from None
        if q.dtype != torch.uint8 or zero.dtype != torch.uint8 or not scale.is_floating_point():
            raise FormatError("group codes: qdata and zero_point must be u8, scale a float")
        bits = meta.get("bits") if isinstance(meta, dict) else None
        in_scale = fields.get("in_scale")
        cls._check(q, scale, zero, in_scale, bits)  # type: ignore[arg-type]
        if meta.get("centered") is True:
            q = uncenter(q, zero, bits)  # type: ignore[arg-type]
        elif meta.get("centered", False) is not False:
            raise FormatError("group codes: 'centered' must be true or false")
        return _value(q, scale, zero, in_scale)
