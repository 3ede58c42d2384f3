"""Low-rank replacement modules: a layer as two thin layers, rebuilt from the .mzip by name.

The factors are ordinary ``nn.Linear`` / ``nn.Conv2d`` children (``first`` then ``second``),
so later stages (pruning, quantization, fine-tuning, distillation) see and compress them like
any other layer, and the spec is read from the children's shapes: a child shrunk by later
surgery still rebuilds. A child that a later stage replaced (W8A8 quantization turns a factor
into ``QuantLinear`` / ``QuantConv2d``) has its own spec in the file's architecture, applied
after this module is built.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from modelzip.nn.specs import Buildable
from modelzip.ops.lowrank import conv_matrix, svd_factors


class LowRankLinear(Buildable):
    """``y = second(first(x))`` with ``first``: in -> rank (no bias), ``second``: rank -> out.

    Example:
        >>> layer = LowRankLinear.from_linear(nn.Linear(300, 100), rank=20)
        >>> layer(torch.randn(2, 300)).shape
        torch.Size([2, 100])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int) -> LowRankLinear:
        """The best rank-``rank`` replacement of ``layer`` (truncated SVD of its weight)."""
        w = layer.weight.detach()
        out = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None)
        a, b = svd_factors(w, rank)
        with torch.no_grad():
            out.first.weight.copy_(b)
            out.second.weight.copy_(a)
            if layer.bias is not None:
                out.second.bias.copy_(layer.bias.detach())
        return out

    @property
    def rank(self) -> int:
        return self.first.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def to_spec(self) -> dict[str, Any]:
        return {
            "in_features": self.first.in_features,
            "out_features": self.second.out_features,
            "rank": self.first.out_features,
            "bias": self.second.bias is not None,
        }


class LowRankConv2d(Buildable):
    """Channel decomposition of a conv: a k x k conv to ``rank`` channels, then a 1 x 1 conv.

    ``first`` keeps the original kernel, stride, padding and dilation; ``second`` mixes the
    ``rank`` channels into ``out_channels`` and carries the bias. At full rank it computes the
    original conv exactly (up to float rounding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | str | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.first = nn.Conv2d(
            in_channels,
            rank,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
            padding_mode=padding_mode,  # type: ignore[arg-type]  # a str; Conv2d validates it
        )
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, rank: int) -> LowRankConv2d:
        """The best rank-``rank`` channel decomposition of ``layer`` (groups must be 1)."""
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not factorized")
        w = layer.weight.detach()
        # The stubs type a Conv2d's sizes as tuple[int, ...]; they are pairs.
        out = cls(
            layer.in_channels,
            layer.out_channels,
            cast("tuple[int, int]", layer.kernel_size),
            rank,
            stride=cast("tuple[int, int]", layer.stride),
            padding=cast("str | tuple[int, int]", layer.padding),
            dilation=cast("tuple[int, int]", layer.dilation),
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
        a, b = svd_factors(conv_matrix(w), rank)
        with torch.no_grad():
            out.first.weight.copy_(b.reshape(rank, *w.shape[1:]))
            out.second.weight.copy_(a.reshape(w.shape[0], rank, 1, 1))
            if layer.bias is not None:
                cast(torch.Tensor, out.second.bias).copy_(layer.bias.detach())
        return out

    @property
    def rank(self) -> int:
        return self.first.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def to_spec(self) -> dict[str, Any]:
        # ``first`` may have been replaced by a later stage (an int8 ``QuantConv2d``, which has
        # the same sizes and always pads with zeros); its own spec records its type.
        f = self.first
        return {
            "in_channels": f.in_channels,
            "out_channels": self.second.out_channels,
            "kernel_size": list(f.kernel_size),
            "rank": f.out_channels,
            "stride": list(f.stride),
            "padding": f.padding if isinstance(f.padding, str) else list(f.padding),
            "dilation": list(f.dilation),
            "bias": self.second.bias is not None,
            "padding_mode": getattr(f, "padding_mode", "zeros"),
        }


#: Modules produced by low-rank factorization (a later lowrank stage leaves them alone).
LOWRANK_MODULES: tuple[type[nn.Module], ...] = (LowRankLinear, LowRankConv2d)
