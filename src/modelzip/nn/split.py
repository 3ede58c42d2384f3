"""One call that gives PyTorch's packed-weight modules separate weight layers.

``nn.MultiheadAttention`` (``modelzip.nn.attention``) and ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
(``modelzip.nn.rnn``) keep matrices where no layer method reaches them. ``compress``, the
search (its space and its sensitivity seeds) and ``sensitivity`` all see a model after this
call, so a searched recipe names the same layers ``compress`` will find.
"""

from __future__ import annotations

from torch import nn

from modelzip.nn.attention import split_attention
from modelzip.nn.rnn import split_recurrent


def split_packed_weights(model: nn.Module) -> dict[str, str]:
    """Split every attention and recurrent module it can (same outputs), in place; returns
    ``{name: "split" or the reason it was left}``."""
    return {**split_attention(model), **split_recurrent(model)}
