"""Latency: median wall time of a forward pass after warm-up."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def median_ms(
    model: nn.Module, x: torch.Tensor, *, warmup: int = 3, repeats: int = 15, budget_s: float = 2.0
) -> float:
    """Median milliseconds of ``model(x)``; stops early once ``budget_s`` is spent."""
    model.eval()
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start > budget_s and len(times) >= 3:
                break
    return statistics.median(times)


def latency(model: nn.Module, sample: torch.Tensor, batch_n: int = 256) -> dict[str, float]:
    """``{"b1": ms, "bN": ms, "N": batch_n}`` on copies of a real input sample."""
    x1 = sample[:1]
    reps = -(-batch_n // len(sample))
    xn = sample.repeat(reps, *([1] * (sample.dim() - 1)))[:batch_n]
    return {
        "b1": round(median_ms(model, x1), 4),
        "bN": round(median_ms(model, xn), 4),
        "N": batch_n,
    }
