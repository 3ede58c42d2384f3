"""``quantize``: uniform affine weight quantization kept on the module (fake-quant grid)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import UnsupportedError
from modelzip.nn.constraints import AffineQuant, constrain
from modelzip.ops import affine
from modelzip.registry import register
from modelzip.targets import per_layer, select

VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


class QuantizeConfig(MethodConfig):
    """Options of a quantization stage.

    Example (YAML): ``{method: quantize, bits: 8, scheme: symmetric, granularity: channel}``
    """

    method: ClassVar[str] = "quantize"
    bits: int | dict[str, int] = 8
    scheme: Literal["symmetric"] = "symmetric"
    granularity: Literal["tensor", "channel"] = "channel"
    layers: list[str] | None = Field(None, description="layer patterns to quantize (default: all)")

    @field_validator("bits")
    @classmethod
    def _valid_bits(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        for b in v.values() if isinstance(v, dict) else [v]:
            if b not in VALID_BITS:
                raise ValueError(f"bits must be one of {VALID_BITS}, got {b}")
        return v


@register(QuantizeConfig)
def quantize(model: nn.Module, cfg: QuantizeConfig, ctx: Context) -> nn.Module:
    """Quantize weights to a uniform grid, per tensor or per output channel."""
    layers = select(model, cfg.layers)
    bits = per_layer(cfg.bits, layers, "bits")
    report = {}
    for name, b in bits.items():
        layer = layers[name]
        w = layer.weight
        if cfg.granularity == "channel" and w.dim() < 2:
            raise UnsupportedError(f"{name}: per-channel quantization needs a 2-D or larger weight")
        axis = 0 if cfg.granularity == "channel" else None
        q = AffineQuant(b, symmetric=True, axis=axis)
        before = w.detach().clone()
        constrain(layer, "weight", q)
        report[name] = {
            "bits": b,
            "sqnr_db": round(affine.sqnr_db(before, layer.weight.detach()), 2),
        }
    ctx.notes["layers"] = report
    return model
