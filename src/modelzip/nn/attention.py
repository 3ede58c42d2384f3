"""``nn.MultiheadAttention`` with its packed input projection as three ``nn.Linear`` layers.

PyTorch's attention keeps the query, key and value projections in one ``in_proj_weight``
parameter (3 x E x E, a quarter of a transformer layer's weights) and reads it, and
``out_proj.weight``, directly inside ``F.multi_head_attention_forward``: no method that works on
layers (pruning, quantization, int8 kernels, low-rank factors, codebooks) could compress them,
and w8a8 on a ``nn.TransformerEncoder`` left a third of its weights in fp32. ``SplitAttention``
computes the same attention from ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` layers that
it calls, so every method applies to them as to any ``Linear``. ``split_attention`` swaps it in
for every attention module it can represent exactly (the usual configuration: one embedding
size for query, key and value, no ``add_bias_kv``, no ``add_zero_attn``); the rest are left
as they are, with the reason.

The forward takes ``nn.MultiheadAttention``'s arguments and returns what it returns; PyTorch's
encoder and decoder layers call it unchanged. Its ``in_proj_bias`` is None on purpose: their
fused fast path (which would read weights directly) checks it first and then stays off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.nn.specs import Buildable


class SplitAttention(Buildable):
    """Multi-head attention from four ``nn.Linear`` layers (``nn.MultiheadAttention``'s math)."""

    #: read by PyTorch's transformer layers: no packed projection bias (fast path off)
    in_proj_bias = None
    in_proj_weight = None
    _qkv_same_embed_dim = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.has_bias = batch_first, bias  # (the layers may be replaced)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same attention, its ``in_proj`` cut into three layers (weights copied)."""
        bias = mha.in_proj_bias is not None
        out = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias, mha.batch_first)
        w = mha.in_proj_weight.detach()
        with torch.no_grad():
            for i, layer in enumerate((out.q_proj, out.k_proj, out.v_proj)):
                e = mha.embed_dim
                layer.weight.copy_(w[i * e : (i + 1) * e])
                if bias:
                    layer.bias.copy_(mha.in_proj_bias.detach()[i * e : (i + 1) * e])
            out.out_proj.weight.copy_(mha.out_proj.weight.detach())
            if mha.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias.detach())
        return out.to(w.device).train(mha.training)

    def to_spec(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "bias": self.has_bias,
            "batch_first": self.batch_first,
        }

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [N, L, E] -> [N, H, L, D]
        # -1 heads, as Hugging Face's attention: channel pruning may remove whole heads
        return x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        heads: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """One additive float mask, broadcastable to [N, H, L, S] (True = not attended)."""

        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
                    m, float("-inf")
                )
            return m.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:  # [N * H, L, S]
                mask = mask.unflatten(0, (-1, heads))
        if key_padding_mask is not None:
            pad = additive(key_padding_mask)[:, None, None, :]  # [N, 1, 1, S]
            mask = pad if mask is None else mask + pad
        return mask

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # is_causal is only a hint in nn.MultiheadAttention: attn_mask carries the mask
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        unbatched = query.dim() == 2
        if unbatched:  # [L, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = self._mask(attn_mask, key_padding_mask, q.shape[1], q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores, dim=-1)
            if dropout:  # as nn.MultiheadAttention: the returned weights are after dropout
                probs = F.dropout(probs, dropout)
            ctx = probs @ v
            weights = probs.mean(dim=1) if average_attn_weights else probs
            if unbatched:
                weights = weights.squeeze(0)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        # flatten, not reshape(batch, length, -1): traced sizes are fixed in an ONNX export
        out = self.out_proj(ctx.transpose(1, 2).flatten(2))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def why_not_split(mha: nn.MultiheadAttention) -> str | None:
    """None when ``SplitAttention`` computes ``mha`` exactly, else the reason it cannot."""
    if not mha._qkv_same_embed_dim:
        return "query, key and value have different sizes (kdim/vdim)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "add_bias_kv / add_zero_attn"
    if (mha.in_proj_bias is None) != (mha.out_proj.bias is None):
        return "a bias on only one of the projections"
    return None


def split_attention(model: nn.Module) -> dict[str, str]:
    """Replace every ``nn.MultiheadAttention`` that ``SplitAttention`` represents exactly;
    returns ``{name: "split" or the reason it was left}``."""
    from modelzip.nn.fastpath import keep_transformer_slow_paths

    done: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if type(module) is not nn.MultiheadAttention:
            continue
        reason = why_not_split(module)
        done[name] = reason or "split"
        if reason is None:
            model.set_submodule(name, SplitAttention.from_attention(module))
    if any(v == "split" for v in done.values()):
        keep_transformer_slow_paths(model)
    return done
