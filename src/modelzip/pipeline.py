"""Runs a recipe stage by stage and records metrics after each. Knows no method by name."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from torch import nn

from modelzip.context import Context
from modelzip.eval.evaluate import evaluate
from modelzip.mzip import to_bytes
from modelzip.recipe import Recipe
from modelzip.registry import get_method

StageHook = Callable[[int, str, dict[str, Any]], None]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of the model for use as a teacher: eval mode, no gradients."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def run(
    model: nn.Module,
    recipe: Recipe,
    ctx: Context,
    *,
    on_stage: StageHook | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Apply every stage in order; returns the compressed model and per-stage metrics.

    Each stage's record holds its config, its wall time, what the method noted (per-layer
    sparsity, skipped layers and why, ...), and test-split accuracy, nonzero parameters and
    the size the model would have as a .mzip file at that point.
    """
    if ctx.teacher is None:
        ctx.teacher = frozen_copy(model)
    stages: list[dict[str, Any]] = []
    for i, cfg in enumerate(recipe.stages, 1):
        method = get_method(cfg.method)
        ctx.notes = {}
        ctx.log.info("stage %d/%d: %s", i, len(recipe.stages), cfg.method)
        t0 = time.perf_counter()
        model = method.apply(model, cfg, ctx)
        seconds = time.perf_counter() - t0
        metrics = evaluate(
            model,
            ctx.data,
            file_bytes=len(to_bytes(model)),
            measure_latency=False,
            reference=ctx.teacher,
        )
        record = {
            "stage": i,
            "method": cfg.method,
            "config": cfg.to_dict(),
            "seconds": round(seconds, 3),
            **{k: metrics[k] for k in ("accuracy", "params", "nonzero", "sparsity", "bytes")},
            "notes": dict(ctx.notes),
        }
        stages.append(record)
        if on_stage is not None:
            on_stage(i, cfg.method, record)
    return model, stages
