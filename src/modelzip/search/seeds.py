"""First trials from the per-layer sensitivity analysis, so the search starts from good ones.

``sensitivity`` prunes each layer alone (no fine-tuning) and measures val accuracy. The
sparsity a layer tolerates there, one-shot, is what it tolerates least; fine-tuning recovers
a good share of the rest, so the seeds push every layer's kept fraction down from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from modelzip.errors import ModelzipError
from modelzip.search.space import Space
from modelzip.zoo.data import DataBundle

if TYPE_CHECKING:
    from modelzip.search.runner import SearchConfig

LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def tolerated(layer: dict[str, Any], sparsities: list[float], drop: float) -> float:
    """The highest tried sparsity whose one-shot drop is at most ``drop``."""
    ok = [s for s, d in zip(sparsities, layer["drop"], strict=True) if d <= drop]
    return max(ok) if ok else 0.0


def seed_policies(
    space: Space, model: nn.Module, data: DataBundle, cfg: SearchConfig
) -> list[dict[str, Any]]:
    """Up to three policies from the sensitivity curves (none when they cannot be measured:
    embedding tasks, or grouped layers of a large model)."""
    from modelzip.search.sensitivity import sensitivity

    grouped = any(len(u.members) > 1 for u in space.units)
    if data.task.needs_reference or grouped:
        return []
    pattern = "channel" if space.objective == "latency" else "unstructured"
    try:
        sens = sensitivity(model, data, sparsities=LEVELS, pattern=pattern, seed=cfg.seed)
    except ModelzipError:
        return []
    layers, levels = sens["layers"], sens["sparsities"]

    def at(drop: float, keep_scale: float) -> dict[str, float]:
        out = {}
        for u in space.units:
            s = tolerated(layers[u.key], levels, drop) if u.key in layers else 0.0
            # the output layer is the sensitive one (Deep Compression keeps 35% of it)
            scale = 1.0 if u.role == "last" else keep_scale
            out[u.key] = 1 - (1 - s) * scale if s > 0 else s
        return out

    if space.objective == "latency":
        # half of every layer's channels (the prune-channels recipe), the one-shot tolerance
        # at 1 point, and the half-channel policy on int8 kernels
        half = space.seed_policy(dict.fromkeys((u.key for u in space.units), 0.5))
        with_int8 = {**half, "int8": True}
        return [half, space.seed_policy(at(0.01, 1.0)), with_int8]
    return [
        space.seed_policy(at(0.05, 0.5), bits=4),  # fine-tuning halves what must be kept
        space.seed_policy(at(0.10, 0.5), bits=3),  # bolder
        space.seed_policy(at(0.02, 1.0), bits=5),  # safe
    ]


__all__ = ["seed_policies", "tolerated"]
