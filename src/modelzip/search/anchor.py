"""The first trials from a hand-written recipe: the search starts where the recipe ends.

The anchor is a built-in recipe's policy (``deep-compression`` by default) resolved on the
model: the per-layer sparsity of its ``prune`` stage, the bits of its ``cluster`` stage and
the decode budget of its ``encode`` stage, exactly as the recipe's role and size rules pick
them. Trial 0 is that policy trained fully (it skips the short rung), so the search always
has the recipe's own result to beat; the next seeded trials push the big layers from it
(fewer weights kept, fewer bits, the higher pruning learning rate that recovers more at such
sparsity: ``space.PRUNE_LRS``), where the bytes are.

Example:
    >>> anchor_policies(space, model, data)[0]["bits:fc1"]   # doctest: +SKIP
    4
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelzip.errors import ModelzipError
from modelzip.recipe import Recipe
from modelzip.search.space import BIG_SHARE, PRUNE_LRS, Space
from modelzip.targets import per_layer, select
from modelzip.zoo.data import DataBundle

ANCHOR_RECIPE = "deep-compression"


def recipe_policy(
    space: Space, model: nn.Module, data: DataBundle, recipe: str = ANCHOR_RECIPE
) -> dict[str, Any] | None:
    """The policy in ``space`` that ``recipe`` stands for on ``model`` (None when the recipe
    has no prune stage, or its rules cannot be resolved on this model)."""
    if space.objective != "bytes":
        return None
    stages = Recipe.load(recipe).to_dict()["stages"]
    by_method: dict[str, dict[str, Any]] = {}
    for st in stages:
        by_method.setdefault(st["method"], st)
    if "prune" not in by_method:
        return None
    try:
        layers = select(model, example=data.example_inputs)
        sparsity = per_layer(by_method["prune"].get("sparsity", 0.0), layers, "sparsity")
        bits = per_layer(by_method.get("cluster", {}).get("bits", 4), layers, "bits")
    except ModelzipError:
        return None
    first = {u.key: u.members[0] for u in space.units}
    budget = by_method.get("encode", {}).get("decode_budget_ms")
    return space.seed_policy(
        {k: float(sparsity.get(m, 0.0)) for k, m in first.items()},
        bits={k: int(bits.get(m, 8)) for k, m in first.items()},
        budget="unlimited" if budget is None else f"{float(budget):g}",
    )


def anchor_policies(space: Space, model: nn.Module, data: DataBundle) -> list[dict[str, Any]]:
    """The recipe's policy, then two bolder steps from it on the big layers."""
    base = recipe_policy(space, model, data)
    if base is None:
        return []
    big = [u for u in space.units if u.share >= BIG_SHARE]

    def step(keep: float, bits: int, budget: str) -> dict[str, Any]:
        p = dict(base)
        for u in big:
            lo, hi = space.bits_range(u)
            d = float(p[f"density:{u.key}"]) * keep
            p[f"density:{u.key}"] = round(max(space.min_density(u), d), 4)
            p[f"bits:{u.key}"] = min(hi, max(lo, bits))
        p["decode_budget"] = budget
        if "prune_lr" in p:
            p["prune_lr"] = PRUNE_LRS[-1]
        return p

    return [base, step(0.6, 4, "unlimited"), step(0.4, 3, "unlimited")]


__all__ = ["ANCHOR_RECIPE", "anchor_policies", "recipe_policy"]
