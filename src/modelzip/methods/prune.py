"""``prune``: remove weights by importance, unstructured, N:M or whole channels.

Unstructured and N:M pruning leave a ``Mask`` on each weight (pruned entries stay exactly
zero through later fine-tuning, whatever the optimizer does); ``pattern: channel`` removes
output channels/neurons by model surgery so the tensors themselves shrink.

Example (YAML)::

    - method: prune                       # global magnitude pruning, one shot
      sparsity: 0.92
    - method: prune                       # Taylor importance, 3 prune/fine-tune rounds
      sparsity: {default: 0.9, fc3: 0.5}
      scope: layer
      criterion: taylor
      schedule: iterative
      rounds: 3
      epochs: 2
    - method: prune                       # Deep Compression's threshold: |w| > 0.7 std(W)
      threshold: {rule: std, quality: 0.7}
    - method: prune                       # 2:4 semi-structured
      pattern: "2:4"
    - method: prune                       # half of every conv's channels, real surgery
      pattern: channel
      sparsity: 0.5
    - method: prune                       # channels masked on a cubic ramp while training,
      pattern: channel                    # then cut; ranked by BatchNorm scale
      criterion: bn_scale
      schedule: gradual
      epochs: 3
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.methods._prune_scores import (
    batchnorm_row_scales,
    entry_scores,
    layer_sparsity,
    set_mask,
)
from modelzip.ops import pruning
from modelzip.registry import register
from modelzip.targets import per_layer, select
from modelzip.task import to_device

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
PATTERNS = "unstructured, channel, N:M (e.g. 2:4)"


class ThresholdRule(BaseModel):
    """Per-layer threshold instead of a target sparsity: prune ``|w| <= quality * stat(W)``.

    ``rule: std`` is Deep Compression's ``quality * std(W)``; ``rule: median`` uses
    ``median(|W|)`` (``quality: 1`` prunes half of each layer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: Literal["std", "median"]
    quality: float = Field(1.0, gt=0, le=100)


class PruneConfig(MethodConfig):
    """Options of a pruning stage (see the module docstring for recipes)."""

    method: ClassVar[str] = "prune"
    sparsity: float | dict[str, float] = Field(
        0.9, description="fraction removed: of the weights, or of the channels (pattern channel)"
    )
    scope: Literal["layer", "global"] | None = Field(
        None,
        description="one ranking across layers (global, the default for unstructured) "
        "or a target per layer (layer, the default for channel)",
    )
    criterion: Literal["magnitude", "taylor", "random", "bn_scale"] = Field(
        "magnitude", description="bn_scale (|gamma| of the BatchNorms) needs pattern channel"
    )
    norm: Literal["l1", "l2"] = Field("l1", description="channel importance norm")
    threshold: ThresholdRule | None = None
    pattern: str = Field("unstructured", description=PATTERNS)
    layers: list[str] | None = Field(None, description="layer patterns to prune (default: all)")
    schedule: Literal["oneshot", "iterative", "gradual"] = "oneshot"
    rounds: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="iterative: prune/fine-tune rounds (default 3); "
        "gradual: mask updates (default 10)",
    )
    epochs: int = Field(
        1, ge=0, le=1000, description="iterative: fine-tune epochs per round; gradual: epochs"
    )
    lr: float = Field(1e-3, gt=0, le=10)
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="gradual: starting sparsity")
    calibration_batches: int = Field(
        8, ge=1, le=100_000, description="taylor, bias repair: val batches"
    )
    fold_bn: Literal["after", "first", "off"] = Field(
        "after",
        description="pattern channel: fold BatchNorm into the layers 'after' the recipe's last "
        "stage (the default: importance, surgery and any fine-tuning see BatchNorm; the stored "
        "model has none), 'first' (before ranking; fine-tuning then recovers less), or 'off'. "
        "true means 'first', false 'off'",
    )
    round_to: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="pattern channel: keep a multiple of this many channels in each layer "
        "(8 = the fp32 lanes of AVX2): kernels run on whole vector blocks, so the latency "
        "falls with the MACs (the nearest multiple; a layer narrower than this is kept)",
    )
    bias_repair: bool = Field(
        True,
        description="pattern channel: consumers take the removed channels' mean into their "
        "bias (Linear and unpadded conv)",
    )

    @field_validator("fold_bn", mode="before")
    @classmethod
    def _fold_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return "first" if v else "off"
        return v

    @field_validator("sparsity")
    @classmethod
    def _in_range(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        for s in values:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {s}")
        return v

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        if v in ("unstructured", "channel"):
            return v
        m = _NM.match(v)
        if m is None:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {v!r}")
        n, mm = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= mm:
            raise ValueError(f"N:M pattern needs 1 <= N <= M (keep N of every M), got {v!r}")
        return f"{n}:{mm}"

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        given = self.model_fields_set
        if self.threshold is not None:
            if "sparsity" in given:
                raise ValueError("give either sparsity or threshold, not both")
            if self.pattern != "unstructured" or self.criterion != "magnitude":
                raise ValueError("threshold rules need pattern unstructured, criterion magnitude")
            if self.schedule == "gradual":
                raise ValueError("schedule gradual needs a target sparsity, not a threshold")
        if self.nm is not None:
            if "sparsity" in given:
                raise ValueError(f"pattern {self.pattern} fixes the sparsity; drop 'sparsity'")
            if self.scope == "global":
                raise ValueError(
                    f"scope global does not apply to pattern {self.pattern} (it keeps N of "
                    "every M weights in each layer); drop scope"
                )
            if self.schedule != "oneshot":
                raise ValueError("an N:M pattern is applied one shot; add a finetune stage")
        if self.criterion == "bn_scale" and self.pattern != "channel":
            raise ValueError("criterion bn_scale ranks whole channels: it needs pattern channel")
        if self.schedule == "gradual" and self.epochs < 1:
            raise ValueError("schedule gradual trains while pruning: epochs must be >= 1")
        self._no_idle_options(given)
        return self

    def _no_idle_options(self, given: set[str]) -> None:
        """An option the chosen mode ignores is an error, never silently dropped (a user
        writing ``epochs: 5`` on a one-shot prune expects training that would not happen)."""
        applies = {
            "epochs": ("schedule", ("iterative", "gradual")),
            "rounds": ("schedule", ("iterative", "gradual")),
            "lr": ("schedule", ("iterative", "gradual")),
            "initial_sparsity": ("schedule", ("gradual",)),
            "calibration_batches": (
                "criterion",
                ("taylor",)
                if self.pattern != "channel"
                else ("taylor", "magnitude", "bn_scale", "random"),
            ),
            "norm": ("pattern", ("channel",)),
            "fold_bn": ("pattern", ("channel",)),
            "round_to": ("pattern", ("channel",)),
            "bias_repair": ("pattern", ("channel",)),
        }
        for name, (field, valid) in applies.items():
            if name in given and getattr(self, field) not in valid:
                hint = " (or add a finetune stage)" if field == "schedule" else ""
                raise ValueError(
                    f"{name!r} applies only with {field} {' or '.join(valid)}, "
                    f"got {field} {getattr(self, field)}{hint}"
                )

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern, else None."""
        m = _NM.match(self.pattern)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def resolved_scope(self) -> str:
        if self.scope is not None:
            return self.scope
        return "global" if self.pattern == "unstructured" else "layer"


@register(PruneConfig)
def prune(model: nn.Module, cfg: PruneConfig, ctx: Context) -> nn.Module:
    """Prune weights (magnitude, Taylor or random), unstructured, N:M or whole channels."""
    layers = select(model, cfg.layers, example=ctx.example)
    ctx.notes.update({"criterion": cfg.criterion, "pattern": cfg.pattern, "schedule": cfg.schedule})
    if cfg.pattern == "channel":
        from modelzip.methods._prune_channels import prune_channels

        return prune_channels(model, layers, cfg, ctx)
    targets = per_layer(cfg.sparsity, layers, "sparsity")
    # A target of 0 keeps a layer dense: it stays out of a global ranking too (a recipe's
    # ``"params<2000": 0`` or ``"role:last": 0`` rule).
    dense = [n for n, s in targets.items() if s == 0 and cfg.threshold is None]
    if dense:
        ctx.notes["kept_dense"] = dense
    targets = {n: s for n, s in targets.items() if n not in dense}
    layers = {n: m for n, m in layers.items() if n in targets}
    if not layers:  # e.g. an LSTM model whose one Linear is the head the recipe keeps dense
        ctx.notes["warnings"] = [f"no layer to prune: every selected layer is kept dense ({dense})"]
        ctx.log.warning("prune: no layer to prune (every selected layer is kept dense)")
        return model
    if cfg.nm is not None:
        layers = _nm_capable(layers, cfg.nm[1], ctx)
    if cfg.schedule == "gradual":
        _gradual(model, layers, targets, cfg, ctx)
    elif cfg.schedule == "iterative":
        rounds = cfg.rounds or 3
        history = []
        for r in range(1, rounds + 1):
            step = {n: pruning.iterative_sparsity(r, rounds, s) for n, s in targets.items()}
            prune_once(model, layers, step, cfg, ctx, stream=r)
            loss = ctx.fit(
                model,
                epochs=cfg.epochs,
                lr=cfg.lr,
                description=f"prune round {r}/{rounds}",
            )
            history.append(
                {
                    "round": r,
                    "sparsity": _mean(layer_sparsity(layers), layers),
                    "train_loss": round(loss, 6),
                }
            )
        ctx.notes["rounds"] = history
    else:
        prune_once(model, layers, targets, cfg, ctx)
    ctx.notes["layer_sparsity"] = layer_sparsity(layers)
    emptied = [n for n, s in ctx.notes["layer_sparsity"].items() if s >= 1.0]
    if emptied:  # global ranking can take a whole layer; say so rather than hide it
        ctx.notes["warnings"] = [f"{n}: every weight was pruned" for n in emptied]
        ctx.log.warning("prune: every weight of %s was pruned", ", ".join(emptied))
    return model


def prune_once(
    model: nn.Module,
    layers: dict[str, nn.Module],
    targets: dict[str, float],
    cfg: PruneConfig,
    ctx: Context,
    *,
    stream: int = 0,
) -> None:
    """One pruning pass: score, build keep-masks by the config's rule, attach them."""
    if cfg.threshold is not None:
        with_masks = {
            n: pruning.threshold_keep(
                _weight(m).detach(), cfg.threshold.rule, cfg.threshold.quality
            )
            for n, m in layers.items()
        }
    else:
        # across layers, a BatchNorm's scale is part of what a weight is worth
        ranked_globally = cfg.nm is None and cfg.resolved_scope == "global"
        row_scales = (
            batchnorm_row_scales(model, to_device(ctx.data.example_inputs(2), ctx.device))
            if ranked_globally and cfg.criterion == "magnitude"
            else None
        )
        scores = entry_scores(
            model,
            layers,
            cfg.criterion,
            ctx,
            batches=cfg.calibration_batches,
            stream=stream,
            row_scales=row_scales,
        )
        if cfg.nm is not None:
            n, m = cfg.nm
            with_masks = {name: pruning.nm_keep(s, n, m) for name, s in scores.items()}
        elif cfg.resolved_scope == "layer":
            with_masks = pruning.keep_smallest_out(scores, targets)
        else:
            with_masks = pruning.global_keep(scores, targets)
    for name, keep in with_masks.items():
        set_mask(layers[name], keep)


def _gradual(
    model: nn.Module,
    layers: dict[str, nn.Module],
    targets: dict[str, float],
    cfg: PruneConfig,
    ctx: Context,
) -> None:
    """Train for ``epochs`` while sparsity follows Zhu & Gupta's cubic ramp.

    The ramp ends at about 75% of the steps, so the last quarter recovers at the final sparsity.
    """
    steps = cfg.epochs * len(ctx.data.train)
    updates = cfg.rounds or 10
    every = max(1, int(0.75 * steps) // updates)
    end = every * updates  # the last update lands exactly on the final sparsity
    for layer in layers.values():  # masks exist before the optimizer sees the parameters
        set_mask(layer, _weight(layer).detach() == _weight(layer).detach())
    history: list[dict[str, Any]] = []

    def at(step: int) -> dict[str, float]:
        return {
            n: pruning.cubic_sparsity(
                step, final=s, initial=min(cfg.initial_sparsity, s), begin=0, end=end
            )
            for n, s in targets.items()
        }

    def on_step(step: int) -> None:
        if step % every == 0 and step <= end:
            prune_once(model, layers, at(step), cfg, ctx, stream=step)
            history.append({"step": step, "sparsity": _mean(layer_sparsity(layers), layers)})

    if cfg.initial_sparsity > 0:
        prune_once(model, layers, at(0), cfg, ctx)
    loss = ctx.fit(
        model,
        epochs=cfg.epochs,
        lr=cfg.lr,
        on_step=on_step,
        description="gradual prune",
    )
    prune_once(model, layers, targets, cfg, ctx, stream=steps + 1)  # no-op once the ramp ended
    ctx.notes["steps"] = history
    ctx.notes["train_loss"] = round(loss, 6)


def _nm_capable(layers: dict[str, nn.Module], m: int, ctx: Context) -> dict[str, nn.Module]:
    """Layers whose input dimension splits into groups of M; the others are reported."""
    ok, skipped = {}, {}
    for name, layer in layers.items():
        cin = _weight(layer).shape[1]
        if cin % m:
            skipped[name] = f"input dimension {cin} is not a multiple of M={m}"
        else:
            ok[name] = layer
    if skipped:
        ctx.notes["skipped"] = skipped
    if not ok:
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ConfigError(f"no selected layer can hold an N:M pattern with M={m} ({detail})")
    return ok


def _mean(sparsity: dict[str, float], layers: dict[str, nn.Module]) -> float:
    """Size-weighted mean sparsity of the layers."""
    sizes = {n: _weight(layers[n]).numel() for n in sparsity}
    total = sum(sizes.values())
    return round(sum(sparsity[n] * sizes[n] for n in sparsity) / max(total, 1), 6)


def _weight(layer: nn.Module) -> torch.Tensor:
    # A selected layer's weight; the stubs type module attributes as Tensor | Module.
    return cast(torch.Tensor, layer.weight)
