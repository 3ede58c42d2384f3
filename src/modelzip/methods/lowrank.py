"""``lowrank``: replace Linear and Conv2d layers by two thin layers (truncated SVD).

The rank of each layer comes from ``ratio`` (keep about that fraction of the layer's weight
parameters), ``energy`` (keep that fraction of the squared singular values) or an explicit
``rank``; ``scope: global`` spends one ratio budget across layers by singular-value energy.
A layer is factorized only where the factors store clearly fewer numbers than the dense
weight (``min_saving``); the others are listed in the stage notes with the reason. Recover
accuracy with a following ``finetune`` or ``distill`` stage.

Example (YAML)::

    stages:
      - {method: lowrank, ratio: 0.25}
      - {method: distill, epochs: 3, alpha: 0.5, temperature: 4}
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.nn.fastpath import keep_transformer_slow_paths, weight_read_directly
from modelzip.nn.lowrank import LOWRANK_MODULES, LowRankConv2d, LowRankLinear
from modelzip.ops import lowrank as lr
from modelzip.registry import register
from modelzip.targets import WEIGHT_LAYERS, per_layer, select

Number = float | dict[str, float]


class LowrankConfig(MethodConfig):
    """Options of a low-rank factorization stage: give one of ``ratio``, ``energy``, ``rank``.

    Each takes a number or a ``{default: x, "pattern": y}`` map. With none given, ``ratio``
    is 0.5. With ``scope: global`` the ratio is one budget for all selected layers together,
    spent where it keeps the most singular-value energy (small layers such as a 10-class head
    keep a higher rank); that is the default for a single number ``ratio`` (or none), since one
    ratio per layer would cut a 10-class head to rank 4. A per-layer map (or ``scope: layer``)
    gives each layer its own target, e.g. ``ratio: {default: 0.3, "role:last": 1}`` (ratio 1
    keeps a layer dense: 0.9 would still cut a 10 x 100 head to rank 8 of 10).
    A layer whose factors would save less than ``min_saving`` of its weights stays dense: the
    extra layer costs latency for next to no size.

    Example (YAML): ``{method: lowrank, energy: 0.95, layers: ["fc*"]}``
    """

    method: ClassVar[str] = "lowrank"
    ratio: Number | None = None
    energy: Number | None = None
    rank: int | dict[str, int] | None = None
    scope: Literal["layer", "global"] | None = Field(
        None, description="global (one ratio budget) is the default for a single ratio number"
    )
    min_saving: float = Field(
        0.1, ge=0, lt=1, description="leave a layer dense when its factors save less than this"
    )
    layers: list[str] | None = Field(None, description="layer patterns to factorize (default: all)")

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, v: Number | None) -> Number | None:
        for x in _values(v):
            if not 0 < x <= 1:
                raise ValueError(
                    f"ratio must be in (0, 1] (fraction of parameters kept; 1 keeps a layer "
                    f"dense), got {x}"
                )
        return v

    @field_validator("energy")
    @classmethod
    def _energy_range(cls, v: Number | None) -> Number | None:
        for x in _values(v):
            if not 0 < x <= 1:
                raise ValueError(f"energy must be in (0, 1] (singular-value energy), got {x}")
        return v

    @field_validator("rank")
    @classmethod
    def _rank_positive(cls, v: int | dict[str, int] | None) -> int | dict[str, int] | None:
        for x in _values(v):
            if x < 1:
                raise ValueError(f"rank must be a positive integer, got {x}")
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> LowrankConfig:
        given = [k for k in ("ratio", "energy", "rank") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of ratio, energy, rank; got {', '.join(given)}")
        if self.scope == "global" and (
            given not in ([], ["ratio"]) or isinstance(self.ratio, dict)
        ):
            raise ValueError("scope 'global' takes one number 'ratio' (a budget for all layers)")
        return self

    @property
    def resolved_scope(self) -> str:
        """``global`` for one number ``ratio`` (or no rule) unless told otherwise."""
        if self.scope is not None:
            return self.scope
        plain_ratio = self.energy is None and self.rank is None and not isinstance(self.ratio, dict)
        return "global" if plain_ratio else "layer"

    def rule(self) -> tuple[str, Any]:
        """Which rank rule applies and its value (ratio 0.5 by default)."""
        for key in ("rank", "energy", "ratio"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        return "ratio", 0.5


def _values(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v.values()) if isinstance(v, dict) else [v]


def _shape(layer: nn.Module) -> tuple[int, int]:
    w = cast(torch.Tensor, layer.weight)
    return w.shape[0], w[0].numel()


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as the layer computes it (constraints applied), as a 2-D matrix."""
    w = cast(torch.Tensor, layer.weight)
    return w.detach().reshape(w.shape[0], -1)


def choose_rank(
    name: str, layer: nn.Module, rule: str, value: float | int, spectrum: torch.Tensor
) -> int:
    """The rank for one layer under ``rule``; an explicit rank beyond the matrix is an error."""
    m, n = _shape(layer)
    if rule == "rank":
        if value > min(m, n):
            raise ConfigError(
                f"lowrank.rank = {value} for layer {name!r} is larger than its {m}x{n} weight "
                f"matrix allows (max rank {min(m, n)})"
            )
        return int(value)
    if rule == "ratio":
        return lr.rank_for_ratio(m, n, float(value))
    return lr.rank_for_energy(spectrum, float(value))


def _skip_reason(name: str, layer: nn.Module, inside: set[str]) -> str | None:
    if name in inside:
        return "already a low-rank factor"
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        return f"{type(layer).__name__} is not supported (Linear and Conv2d are)"
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return f"grouped convolution (groups={layer.groups})"
    return weight_read_directly(layer)


def _no_gain(m: int, n: int, rank: int | None, min_saving: float) -> str | None:
    """Why rank-``rank`` factors of an m x n weight are not worth it, or None."""
    if rank is None:
        return None
    after = lr.factored_params(m, n, rank)
    if after < (1 - min_saving) * m * n:
        return None
    saved = 1 - after / (m * n)
    return (
        f"rank {rank} needs {after} parameters vs the dense {m}x{n}={m * n} "
        f"(saves {saved:.1%}, below min_saving {min_saving:.0%}; ranks below "
        f"{(1 - min_saving) * m * n / (m + n):.1f} pay)"
    )


def _global_ranks(
    shapes: dict[str, tuple[int, int]],
    spectra: dict[str, torch.Tensor],
    budget: int,
    min_saving: float,
    skipped: dict[str, str],
) -> dict[str, int]:
    """Allocate one budget; layers that would barely shrink stay dense and their dense size
    is taken out of the budget before the others are allocated again."""
    shapes = dict(shapes)
    while shapes:
        ranks = lr.allocate_ranks(shapes, {n: spectra[n] for n in shapes}, budget)
        dense = {n: r for n, r in ranks.items() if _no_gain(*shapes[n], r, min_saving)}
        if not dense:
            return ranks
        for name, rank in dense.items():
            skipped[name] = str(_no_gain(*shapes[name], rank, min_saving))
            budget -= shapes[name][0] * shapes[name][1]
            del shapes[name]
    return {}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    keep_transformer_slow_paths(model)  # a fused transformer kernel would read its weight


@register(LowrankConfig)
def lowrank(model: nn.Module, cfg: LowrankConfig, ctx: Context) -> nn.Module:
    """Truncated-SVD factorization of Linear and Conv2d layers where it saves parameters."""
    layers = select(model, cfg.layers, types=WEIGHT_LAYERS, example=ctx.example)
    inside = {
        f"{owner}.{child}" if owner else child
        for owner, m in model.named_modules()
        if isinstance(m, LOWRANK_MODULES)
        for child in ("first", "second")
    }
    rule, value = cfg.rule()
    targets = per_layer(value, layers, rule)
    done: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    eligible: dict[str, nn.Module] = {}
    for name, layer in layers.items():
        if name not in targets:
            continue
        if rule == "ratio" and cfg.resolved_scope == "layer" and float(targets[name]) >= 1:
            skipped[name] = "ratio 1: kept dense"
            continue
        reason = _skip_reason(name, layer, inside)
        if reason is None:
            eligible[name] = layer
        else:
            skipped[name] = reason
    spectra = {n: lr.singular_values(_matrix(layer)) for n, layer in eligible.items()}
    shapes = {n: _shape(layer) for n, layer in eligible.items()}
    ctx.notes["scope"] = cfg.resolved_scope
    if cfg.resolved_scope == "global":
        budget = int(float(value) * sum(m * n for m, n in shapes.values()))
        ranks = _global_ranks(shapes, spectra, budget, cfg.min_saving, skipped)
    else:
        ranks = {
            n: choose_rank(n, layer, rule, targets[n], spectra[n]) for n, layer in eligible.items()
        }
    for name, layer in eligible.items():
        m, n = shapes[name]
        reason = _no_gain(m, n, ranks.get(name), cfg.min_saving)
        if name in skipped or reason is not None:
            skipped.setdefault(name, reason or "")
            continue
        rank = ranks[name]
        if isinstance(layer, nn.Linear):
            new: nn.Module = LowRankLinear.from_linear(layer, rank)
        else:
            new = LowRankConv2d.from_conv(cast(nn.Conv2d, layer), rank)  # Linear or Conv2d
        done[name] = {
            "shape": [m, n],
            "rank": rank,
            "max_rank": min(m, n),
            "params_before": m * n,
            "params_after": lr.factored_params(m, n, rank),
            "energy_kept": round(lr.energy_kept(spectra[name], rank), 6),
        }
        _set_module(model, name, new.to(cast(torch.Tensor, layer.weight).device))
    ctx.notes["rule"] = {rule: value}
    ctx.notes["layers"] = done
    ctx.notes["skipped"] = skipped
    if not done:
        ctx.log.warning("lowrank: no layer was factorized (%s)", _grouped(skipped))
    return model


def _grouped(skipped: dict[str, str]) -> str:
    """Each reason once, with how many layers and which (the first three): a model of many
    small layers gave one warning repeating "ratio 1: kept dense" for every layer."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{reason}: {shown}")
    return "; ".join(parts)
