"""``fold_bn``: fold BatchNorm layers into the Conv/Linear before them (exact in eval mode).

Structured pruning (``prune`` with ``pattern: channel``) and ``quantize`` run this first
unless their ``fold_bn`` option is false; as an explicit stage it is::

    - method: fold_bn

Pairs come from a forward pass on a real batch (``modelzip.graph.fold``); a BatchNorm that
cannot fold (its input is not a layer's output, that output is also read elsewhere, batch
statistics only, a constraint other than a pruning mask on the layer) stays, with the reason
in the stage notes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.graph.fold import NORMS, fold_batchnorm
from modelzip.registry import register


class FoldBNConfig(MethodConfig):
    """Options of a BatchNorm-folding stage (none needed).

    Example (YAML): ``{method: fold_bn}``
    """

    method: ClassVar[str] = "fold_bn"


def fold_into(model: nn.Module, ctx: Context) -> dict[str, Any]:
    """Fold the model's BatchNorms in place, tracing on the first test batch; the report
    (``folded``: bn -> layer, ``kept``: bn -> reason) for a stage's notes."""
    if not any(isinstance(m, NORMS) for m in model.modules()):
        return {"folded": {}, "kept": {}}  # nothing to fold: no forward pass needed
    return fold_batchnorm(model, ctx.data.example(2).to(ctx.device))


@register(FoldBNConfig)
def fold_bn(model: nn.Module, cfg: FoldBNConfig, ctx: Context) -> nn.Module:
    """Fold every foldable BatchNorm into the layer that feeds it."""
    ctx.notes.update(fold_into(model, ctx))
    return model


__all__ = ["FoldBNConfig", "fold_bn", "fold_into"]
