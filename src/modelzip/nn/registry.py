"""The closed allow-lists a .mzip is read with: the constraint kinds its tensors may be
stored as, and the module types its architecture may name.

Both tables are written out here, on purpose: a file can only ever name something listed
below, nothing registers itself by being imported or subclassed, and a second entry under
one name is refused when this module is imported. A new kind or layer type is added here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from torch import nn

from modelzip.nn.attention import SplitAttention
from modelzip.nn.codebook import Codebook, RowCodebook
from modelzip.nn.constraints import AffineQuant, Constraint
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.lowbit import GroupCodes
from modelzip.nn.lowrank import LowRankConv2d, LowRankLinear
from modelzip.nn.quantized import QuantConv2d, QuantLinear
from modelzip.nn.rnn import SplitRNN
from modelzip.nn.specs import TORCH_TYPES

T = TypeVar("T")


def closed_table(items: Iterable[T], key: Callable[[T], str]) -> dict[str, T]:
    """``{key(item): item}``, refusing an empty or repeated key."""
    table: dict[str, T] = {}
    for item in items:
        name = key(item)
        if not name or name in table:
            raise ValueError(f"{name!r} is empty or listed twice in an allow-list")
        table[name] = item
    return table


#: Stored tensor kinds besides ``dense`` (subclasses such as the learned-step quantizer
#: store themselves as their base kind and are not listed).
CONSTRAINT_KINDS: dict[str, type[Constraint]] = closed_table(
    [AffineQuant, Codebook, GroupCodes, RowCodebook], key=lambda cls: cls.kind
)

#: Module types a file's architecture may name: torch's describable layers and modelzip's.
MODULE_TYPES: dict[str, type[nn.Module]] = closed_table(
    [
        *TORCH_TYPES.values(),
        LowRankLinear,
        LowRankConv2d,
        QuantLinear,
        QuantConv2d,
        DynQuantLinear,
        SplitAttention,
        SplitRNN,
    ],
    key=lambda cls: cls.__name__,
)
