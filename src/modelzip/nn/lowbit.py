"""Fixed low-bit group-wise codes as a weight constraint (what ``gptq`` leaves on a layer).

Unlike ``AffineQuant``, whose grid follows the current weights, ``GroupCodes`` holds the codes
an algorithm chose (GPTQ's codes are not the nearest grid points of the float weights), so the
weight *is* ``(qdata - zero_point) * scale`` per (row, group), optionally divided by per-input
channel scales ``in_scale`` (AWQ). Conv kernels are viewed as (out, in * kh * kw). The stored
scales are fp16-exact, so the packer keeps them in 16 bits losslessly; the loader rebuilds the
fp32 weight once (dequantize on load), so the loaded model runs at fp32 speed. With
``scale_bits=8`` the scales are instead rounded to an 8-bit log grid below each row's largest
scale (``ops.gptq.log_scales``) and stored as those codes plus one fp16 scale per row: about
40% of the bytes of fp16 scales (MiniLM), exact on reload too.

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


def _modulus(bits: int, row_bits: torch.Tensor | None) -> int | torch.Tensor:
    """``2^bits``, or one ``2^row_bits[r]`` per row (as a column, to broadcast)."""
    if row_bits is None:
        return 1 << bits
    return (
        torch.ones_like(row_bits, dtype=torch.int16)[:, None] << row_bits.to(torch.int16)[:, None]
    )


def center(
    q: torch.Tensor, zero: torch.Tensor, bits: int, row_bits: torch.Tensor | None = None
) -> torch.Tensor:
    """Codes as stored: ``(q - zero_point) mod 2^bits`` (``2^row_bits[r]`` for row ``r`` when
    rows have their own widths). Weights cluster around zero, which every group's grid puts at
    its own zero point; relative to it the codes of all groups share one peaked distribution
    (a shorter entropy code than the raw codes, whose peak moves with the zero point). Exact
    and invertible (``uncenter``)."""
    flat = q.reshape(q.shape[0], -1).to(torch.int16)
    out = (flat - _expand(zero, q)) % _modulus(bits, row_bits)
    return out.to(torch.uint8).reshape(q.shape)


def uncenter(
    c: torch.Tensor, zero: torch.Tensor, bits: int, row_bits: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of ``center``."""
    flat = c.reshape(c.shape[0], -1).to(torch.int16)
    out = (flat + _expand(zero, c)) % _modulus(bits, row_bits)
    return out.to(torch.uint8).reshape(c.shape)


class GroupCodes(Constraint):
    """The weight is its stored group-wise codes (the input tensor is ignored).

    Rows may have their own code widths (``row_bits``, each at most ``bits``): an embedding
    table keeps the rows its data looks up at more bits than the rest. Each width's rows are
    then stored as their own field, so the entropy coder sees one distribution per width.
    """

    kind = "group-codes"
    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    in_scale: torch.Tensor | None
    row_bits: torch.Tensor | None
    #: the scales' storage: 16 (fp16) or 8 (log codes); ``wanted_scale_bits`` is what was
    #: asked for (8 falls back to 16 for a tensor whose rows have under 4 groups, or whose
    #: scales span more than 8 octaves in some row)
    scale_bits: int
    wanted_scale_bits: int

    def __init__(
        self,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        *,
        bits: int,
        in_scale: torch.Tensor | None = None,
        row_bits: torch.Tensor | None = None,
        scale_bits: int = 16,
    ) -> None:
        super().__init__()
        self.bits = bits
        if scale_bits not in (8, 16):
            raise FormatError(f"group codes: scale_bits must be 8 or 16, got {scale_bits!r}")
        self.register_buffer("qdata", qdata.to(torch.uint8))
        self.register_buffer("scale", scale.float())
        self.scale_bits = self.wanted_scale_bits = scale_bits
        if scale_bits == 8:
            self.set_scale(self.scale)
        self.register_buffer("zero_point", zero_point.to(torch.uint8))
        self.register_buffer("in_scale", None if in_scale is None else in_scale.float())
        self.register_buffer("row_bits", None if row_bits is None else row_bits.to(torch.uint8))
        self._check(self.qdata, self.scale, self.zero_point, self.in_scale, bits, self.row_bits)

    @classmethod
    def from_codes(
        cls,
        codes: ops.Codes,
        *,
        bits: int,
        shape: tuple[int, ...],
        in_scale: torch.Tensor | None = None,
        row_bits: torch.Tensor | None = None,
        scale_bits: int = 16,
    ) -> GroupCodes:
        """Wrap ``ops.gptq`` codes of the 2-D view of a weight of ``shape``."""
        return cls(
            codes.qdata.reshape(shape),
            codes.scale,
            codes.zero_point,
            bits=bits,
            in_scale=in_scale,
            row_bits=row_bits,
            scale_bits=scale_bits,
        )

    def set_scale(self, scale: torch.Tensor) -> None:
        """Store ``scale`` rounded to the format asked for: the 8-bit log grid when it reaches
        every group of this tensor, else fp16 (``scale_bits`` says which)."""
        s = scale.detach().float().clamp_min(ops.MIN_SCALE).half().float()
        coded = ops.log_scales(s) if self.wanted_scale_bits == 8 else None
        self.scale = s if coded is None else ops.from_log_scales(*coded)
        self.scale_bits = 16 if coded is None else 8

    @staticmethod
    def _check(
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        in_scale: torch.Tensor | None,
        bits: int,
        row_bits: torch.Tensor | None = None,
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
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
            raise FormatError(f"group codes: bits must be 1..8, got {bits!r}")
        if row_bits is None:
            if q.numel() and int(q.max()) >= 2**bits:
                raise FormatError(f"group codes: a code exceeds {bits} bits")
            return
        if row_bits.dtype != torch.uint8 or row_bits.shape != (q.shape[0],):
            raise FormatError(f"group codes: row_bits must be u8 of shape ({q.shape[0]},)")
        if row_bits.numel() and not (int(row_bits.min()) >= 1 and int(row_bits.max()) <= bits):
            raise FormatError(f"group codes: row widths must be 1..{bits}")
        top = (1 << row_bits.to(torch.int16)) - 1
        flat = q.reshape(q.shape[0], -1).to(torch.int16)
        if bool((flat > top[:, None]).any()) or bool((zero.to(torch.int16) > top[:, None]).any()):
            raise FormatError("group codes: a code exceeds its row's width")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _value(self.qdata, self.scale, self.zero_point, self.in_scale)
        return w.to(x.dtype) if x.is_floating_point() else w

    def encode(self, x: torch.Tensor) -> Encoded:
        codes = center(self.qdata, self.zero_point, self.bits, self.row_bits)
        meta: dict[str, Any] = {"bits": self.bits, "centered": True}
        fields: dict[str, torch.Tensor] = {}
        if self.row_bits is None:
            fields["qdata"] = codes
        else:
            widths = sorted({int(b) for b in self.row_bits.tolist()})
            for b in widths:
                fields[f"qdata{b}"] = codes[self.row_bits == b].clone()
            fields["row_bits"] = self.row_bits.clone()
            meta["row_widths"] = widths
        if self.scale_bits == 8:
            coded = ops.log_scales(self.scale)
            if coded is None or not torch.equal(ops.from_log_scales(*coded), self.scale):
                raise FormatError("group codes: scales left the log grid (set them with set_scale)")
            fields["scale_log"], fields["scale_top"] = coded
            meta["scale_bits"] = 8
        else:
            fields["scale"] = self.scale.clone()
        fields["zero_point"] = self.zero_point.clone()
        if self.in_scale is not None:
            fields["in_scale"] = self.in_scale.clone()
        return Encoded(self.kind, fields, meta)

    @staticmethod
    def _rows_by_width(fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """The codes of all rows, put back in order from their per-width fields."""
        row_bits, widths = fields["row_bits"], meta.get("row_widths")
        if row_bits.dtype != torch.uint8 or row_bits.dim() != 1:
            raise FormatError("group codes: row_bits must be a 1-D u8 tensor")
        if not isinstance(widths, list) or sorted({int(b) for b in row_bits.tolist()}) != widths:
            raise FormatError("group codes: row_widths does not match row_bits")
        parts: list[torch.Tensor] = []
        for b in widths:
            part = fields.get(f"qdata{b}")
            if part is None or part.dtype != torch.uint8 or part.dim() < 2:
                raise FormatError(f"group codes need a u8 field qdata{b}")
            rows_fit = part.shape[0] == int((row_bits == b).sum())
            if not rows_fit or (parts and part.shape[1:] != parts[0].shape[1:]):
                raise FormatError(f"group codes: qdata{b} does not fit row_bits")
            parts.append(part)
        q = torch.empty((row_bits.shape[0], *parts[0].shape[1:]), dtype=torch.uint8)
        for b, part in zip(widths, parts, strict=True):
            q[row_bits == b] = part
        return q

    @staticmethod
    def _scale(fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """The scales from an fp16/fp32 ``scale`` field or (``scale_bits: 8``) from their log
        codes ``scale_log`` and per-row ``scale_top``."""
        if meta.get("scale_bits", 16) == 16:
            return fields["scale"]
        if meta.get("scale_bits") != 8:
            raise FormatError("group codes: scale_bits must be 8 or 16")
        codes, top = fields["scale_log"], fields["scale_top"]
        if codes.dtype != torch.uint8 or codes.dim() != 2:
            raise FormatError("group codes: scale_log must be a 2-D u8 tensor")
        if not top.is_floating_point() or top.shape != (codes.shape[0],):
            raise FormatError(f"group codes: scale_top must be {codes.shape[0]} floats")
        if not bool(torch.isfinite(top).all()) or bool((top <= 0).any()):
            raise FormatError("group codes: scale_top must be finite and positive")
        return ops.from_log_scales(codes, top)

    @classmethod
    def decode(cls, fields: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        if not isinstance(meta, dict):
            raise FormatError("group codes: meta must be a mapping")
        row_bits = fields.get("row_bits")
        try:
            q = cls._rows_by_width(fields, meta) if row_bits is not None else fields["qdata"]
            scale = cls._scale(fields, meta)
            zero = fields["zero_point"]
        except KeyError as exc:
            raise FormatError(f"group codes need field {exc}") from None
        if q.dtype != torch.uint8 or zero.dtype != torch.uint8 or not scale.is_floating_point():
            raise FormatError("group codes: qdata and zero_point must be u8, scale a float")
        bits = meta.get("bits")
        in_scale = fields.get("in_scale")
        cls._check(q, scale, zero, in_scale, bits, row_bits)  # type: ignore[arg-type]
        if meta.get("centered") is True:
            q = uncenter(q, zero, bits, row_bits)  # type: ignore[arg-type]
        elif meta.get("centered", False) is not False:
            raise FormatError("group codes: 'centered' must be true or false")
        return _value(q, scale, zero, in_scale)
