"""``finetune``: train the model on the train split; constraints on the modules hold."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.registry import register
from modelzip.task import Classification


class FinetuneConfig(MethodConfig):
    """Options of a fine-tuning stage.

    Example (YAML): ``{method: finetune, epochs: 5, lr: 0.0005}``
    """

    method: ClassVar[str] = "finetune"
    epochs: int = Field(3, ge=0, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)


@register(FinetuneConfig)
def finetune(model: nn.Module, cfg: FinetuneConfig, ctx: Context) -> nn.Module:
    """Fine-tune on the train split (masks, quantization grids and codebooks are kept)."""
    loss = ctx.fit(
        model,
        epochs=cfg.epochs,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        description="finetune",
    )
    ctx.notes["train_loss"] = round(loss, 6)
    classes = ctx.data.num_classes
    classifying = isinstance(ctx.data.task, Classification) and classes > 1
    if classifying and abs(loss - math.log(classes)) < 1e-4:
        # seen on a SqueezeNet (no BatchNorm, a ReLU on its logits) pruned to half its
        # channels: every logit stayed at 0, so accuracy stayed at chance with no error
        why = (
            f"training collapsed: the train loss {loss:.6f} is ln({classes}), that of a "
            "constant output, so the model no longer depends on its input (try a lower lr "
            f"than {cfg.lr:g})"
        )
        ctx.notes["collapsed"] = why
        ctx.log.warning(why)
    return model
