"""One trial's work: run a recipe through ``api.compress`` and measure it on the val split.

A trial is exactly what ``modelzip compress --recipe R.yaml --seed S`` does (same code path,
same bytes), measured on ``val`` with the per-stage measurements left out. The function is
top-level and takes only picklable arguments so Ray can run it as a task anywhere.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.recipe import Recipe
from modelzip.zoo.data import DataBundle


def run_recipe(
    model: nn.Module,
    data: DataBundle,
    recipe: dict[str, Any],
    *,
    seed: int,
    latency: bool,
    keep_file: bool,
) -> dict[str, Any]:
    """Compress ``model`` with ``recipe``; val-split metrics, and the .mzip bytes if kept."""
    from modelzip import api

    t0 = time.perf_counter()
    rec = Recipe.from_dict(recipe, where="searched policy")
    with tempfile.TemporaryDirectory(prefix="modelzip-trial-") as tmp:
        out = Path(tmp) / "trial.mzip"
        result = api.compress(
            model,
            data,
            rec,
            out=out,
            seed=seed,
            measure_latency=latency,
            split="val",
            stage_metrics=False,
        )
        blob = out.read_bytes() if keep_file else None
    base, comp = result["baseline"], result["compressed"]
    metrics: dict[str, Any] = {
        "accuracy": comp["accuracy"],
        "baseline_accuracy": base["accuracy"],
        "bytes": comp["bytes"],
        "ratio": result["ratio"],
        "params": comp["params"],
        "nonzero": comp["nonzero"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if latency:
        b, c = base["latency_ms"], comp["latency_ms"]
        metrics["latency_ms"] = c
        metrics["latency_ratio"] = {
            "b1": round(c["b1"] / b["b1"], 4),
            "bN": round(c["bN"] / b["bN"], 4),
        }
    return {"metrics": metrics, "blob": blob}


def run_recipe_task(
    model: nn.Module,
    data: DataBundle,
    recipe: dict[str, Any],
    seed: int,
    latency: bool,
    keep_file: bool,
    threads: int = 1,
) -> dict[str, Any]:
    """``run_recipe`` for a Ray worker: one torch thread per task unless told otherwise."""
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return run_recipe(model, data, recipe, seed=seed, latency=latency, keep_file=keep_file)


__all__ = ["run_recipe", "run_recipe_task"]
