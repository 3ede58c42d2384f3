"""``encode``: choose how the .mzip codes the model's tensors (the last stage of a recipe).

The choice lives on the model (``model.modelzip_coder`` and
``model.modelzip_decode_budget_ms``, read by the packer), so it travels with the model and
cannot drift from it. ``coder: auto`` keeps, per tensor, the smallest output among the codecs
that decode at memory speed (zstd's Huffman stage over byte-aligned codes, bit packing, raw
and exact 16-bit floats); the symbol-by-symbol coders (ANS via constriction, ~27 ns a symbol;
Huffman) compete only within ``decode_budget_ms`` of estimated decode time for the whole file
(``null``: no limit, the smallest file). ``ans`` / ``huffman`` / ``zstd`` restrict the entropy
coder to one family (Huffman is the classic baseline); ``packed`` and ``raw`` turn entropy
coding off.

Optionally, ``round_floats: fp16|bf16`` rounds the remaining float values (biases,
codebooks, unclustered weights) to 16-bit-representable values: a lossy step the user asks
for, applied to the model itself so the reported accuracy includes it; the packer then stores
them in 16 bits losslessly.

Example (YAML): ``{method: encode, coder: auto, decode_budget_ms: 50, round_floats: fp16}``
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from modelzip.codec.codecs import DECODE_BUDGET_MS
from modelzip.codec.pack import BUDGET_ATTR, CODER_ATTR
from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.registry import register

_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class EncodeConfig(MethodConfig):
    """Options of the entropy-coding stage."""

    method: ClassVar[str] = "encode"
    packs_only: ClassVar[bool] = True
    coder: Literal["auto", "ans", "huffman", "zstd", "packed", "raw"] = "auto"
    decode_budget_ms: float | None = Field(default=DECODE_BUDGET_MS, ge=0)
    round_floats: Literal["none", "fp16", "bf16"] = "none"


@register(EncodeConfig)
def encode(model: nn.Module, cfg: EncodeConfig, ctx: Context) -> nn.Module:
    """Pick the .mzip coder (and optionally round floats to 16 bits)."""
    setattr(model, CODER_ATTR, cfg.coder)
    setattr(model, BUDGET_ATTR, cfg.decode_budget_ms)
    if cfg.round_floats != "none":
        half = _HALF[cfg.round_floats]
        rounded = 0
        with torch.no_grad():
            for _name, p in model.named_parameters():
                if p.is_floating_point() and p.requires_grad and p.dtype == torch.float32:
                    p.copy_(p.to(half).to(torch.float32))
                    rounded += 1
        ctx.notes["rounded_tensors"] = rounded
    ctx.notes["coder"] = cfg.coder
    return model
