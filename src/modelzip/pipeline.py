"""Runs a recipe stage by stage and records metrics after each. Knows no method by name.

A stage can ask for work after the recipe's last stage (``Context.defer``): channel pruning
defers folding BatchNorm, so fine-tuning stages after it still train with BatchNorm and the
stored model has none. It runs once, right after the last stage that changes the model
(before an ``encode`` stage), and before that stage's metrics.

With an accuracy budget (``max_drop`` on the recipe, in points on the val split) the run is
checked after every stage; when the finished recipe is over budget it runs again from the
original model with every stage relaxed (``MethodConfig.relaxed``: lower sparsity, more bits,
more fine-tuning), up to ``MAX_BACKOFF`` times, and keeps the first attempt within budget (or
the best one, saying plainly that the budget was missed).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.eval.evaluate import evaluate
from modelzip.mzip import to_bytes
from modelzip.recipe import Recipe
from modelzip.registry import get_method

StageHook = Callable[[int, str, dict[str, Any]], None]
#: How many relaxed re-runs an accuracy budget may take.
MAX_BACKOFF = 2


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
    evaluate_stages: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Apply every stage in order; returns the compressed model and per-stage metrics.

    Each stage's record holds its config, its wall time, what the method noted (per-layer
    sparsity, skipped layers and why, ...), and test-split accuracy, nonzero parameters and
    the size the model would have as a .mzip file at that point. ``evaluate_stages=False``
    leaves those measurements out (a search scoring many recipes measures only the result).
    With a budget, records also hold ``val_accuracy`` and the last one's notes hold
    ``budget`` (what the back-off did).
    """
    if ctx.teacher is None:
        ctx.teacher = frozen_copy(model)
    if recipe.max_drop is None:
        return _run_stages(
            model, recipe.stages, ctx, on_stage=on_stage, budget=False, full=evaluate_stages
        )
    return _run_with_budget(model, recipe, ctx, on_stage, evaluate_stages)


def _val_score(model: nn.Module, ctx: Context) -> float:
    metrics = evaluate(
        model, ctx.data, split="val", file_bytes=0, measure_latency=False, reference=ctx.teacher
    )
    return float(metrics["accuracy"])


def _run_with_budget(
    model: nn.Module,
    recipe: Recipe,
    ctx: Context,
    on_stage: StageHook | None,
    evaluate_stages: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    assert recipe.max_drop is not None
    start = copy.deepcopy(model)
    base = _val_score(start, ctx)
    stages: Sequence[MethodConfig] = recipe.stages
    attempts: list[dict[str, Any]] = []
    results: list[tuple[nn.Module, list[dict[str, Any]]]] = []
    changes: list[str] = []
    for attempt in range(MAX_BACKOFF + 1):
        out, records = _run_stages(
            copy.deepcopy(start), stages, ctx, on_stage=on_stage, budget=True, full=evaluate_stages
        )
        drop = round(100 * (base - records[-1]["val_accuracy"]), 3)
        attempts.append(
            {
                "attempt": attempt,
                "changes": changes,
                "val_drop_pp": drop,
                "stage_val_drop_pp": [round(100 * (base - r["val_accuracy"]), 3) for r in records],
            }
        )
        results.append((out, records))
        if drop <= recipe.max_drop or attempt == MAX_BACKOFF:
            break
        relaxed = [s.relaxed() for s in stages]
        if all(r is None for r in relaxed):
            break
        changes = [
            f"stage {i} ({s.method}): {c}"
            for i, (s, r) in enumerate(zip(stages, relaxed, strict=True), 1)
            if r is not None
            for c in r[1]
        ]
        stages = [r[0] if r is not None else s for s, r in zip(stages, relaxed, strict=True)]
        ctx.log.warning(
            "accuracy budget: val drop %.2f pp > %.2f pp; relaxing (%s)",
            drop,
            recipe.max_drop,
            "; ".join(changes),
        )
    met = [a for a in attempts if a["val_drop_pp"] <= recipe.max_drop]
    chosen = met[0] if met else min(attempts, key=lambda a: a["val_drop_pp"])
    model_out, records = results[chosen["attempt"]]
    if met:
        summary = (
            f"within budget: val drop {chosen['val_drop_pp']:.2f} pp <= {recipe.max_drop} pp"
            + (f" after {chosen['attempt']} relaxation(s)" if chosen["attempt"] else "")
        )
    else:
        summary = (
            f"could not keep accuracy within budget: best val drop {chosen['val_drop_pp']:.2f} pp "
            f"> {recipe.max_drop} pp after {len(attempts) - 1} relaxation(s); kept the best attempt"
        )
    records[-1]["notes"]["budget"] = {
        "max_drop_pp": recipe.max_drop,
        "baseline_val_accuracy": round(base, 6),
        "met": bool(met),
        "chosen_attempt": chosen["attempt"],
        "summary": summary,
        "attempts": attempts,
    }
    return model_out, records


def _run_stages(
    model: nn.Module,
    stages: Sequence[MethodConfig],
    ctx: Context,
    *,
    on_stage: StageHook | None,
    budget: bool,
    full: bool = True,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    ctx.deferred = {}
    # Deferred work runs after the last stage that changes the model (before ``encode``).
    last = max((i for i, c in enumerate(stages, 1) if not c.packs_only), default=len(stages))
    for i, cfg in enumerate(stages, 1):
        method = get_method(cfg.method)
        ctx.notes = {}
        ctx.log.info("stage %d/%d: %s", i, len(stages), cfg.method)
        t0 = time.perf_counter()
        model = method.apply(model, cfg, ctx)
        if i == last and ctx.deferred:
            ctx.notes["deferred"] = {name: fn(model, ctx) for name, fn in ctx.deferred.items()}
            ctx.deferred = {}
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "stage": i,
            "method": cfg.method,
            "config": cfg.to_dict(),
            "seconds": round(seconds, 3),
            "notes": dict(ctx.notes),
        }
        if not full:
            if budget:
                record["val_accuracy"] = _val_score(model, ctx)
            records.append(record)
            if on_stage is not None:
                on_stage(i, cfg.method, record)
            continue
        metrics = evaluate(
            model,
            ctx.data,
            file_bytes=len(to_bytes(model)),
            measure_latency=False,
            reference=ctx.teacher,
        )
        record = {
            **{k: v for k, v in record.items() if k != "notes"},
            **{k: metrics[k] for k in ("accuracy", "params", "nonzero", "sparsity", "bytes")},
            "notes": record["notes"],
        }
        if budget:
            record["val_accuracy"] = _val_score(model, ctx)
        records.append(record)
        if on_stage is not None:
            on_stage(i, cfg.method, record)
    return model, records
