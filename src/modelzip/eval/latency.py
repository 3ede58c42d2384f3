"""Latency: median wall time of a forward pass after warm-up, on a pinned thread count.

Timings are only comparable when both models run on the same number of threads, warmed up,
at the same minute of the machine: ``median_ms`` pins the intra-op thread count (restored
afterwards) and warms up for a number of calls *and* a minimum time (the first calls of a
kernel pay for allocation and oneDNN primitive creation); ``compare`` times several models in
interleaved rounds and gives each one's speedup as the median of the per-round ratios, which
cancels load changes slower than a round on a shared machine.

``inference_form`` is the deployment-style form of a model: traced on a real input and frozen
with TorchScript (weights become constants, no Python in the call), optionally with
``torch.jit.optimize_for_inference`` (oneDNN weight prepacking and fused conv + ReLU/add,
channels-last convolutions). Measure the unpruned and the pruned model in the same form.

Example:
    >>> ms = median_ms(model, x[:1], threads=1)                  # doctest: +SKIP
    >>> r = compare({"base": base, "pruned": small}, x)          # doctest: +SKIP
    >>> r["pruned"]["speedup"]                                   # doctest: +SKIP
    2.7
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: Threads every timing uses unless told otherwise (one: reproducible on a shared machine).
DEFAULT_THREADS = 1

Forward = Callable[[torch.Tensor], Any]


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads (None: leave the count as it is)."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def median_ms(
    model: Forward,
    x: torch.Tensor,
    *,
    warmup: int = 10,
    warmup_s: float = 0.05,
    repeats: int = 15,
    budget_s: float = 2.0,
    threads: int | None = DEFAULT_THREADS,
) -> float:
    """Median milliseconds of ``model(x)`` on ``threads`` threads, after ``warmup`` calls (fewer
    if they take over ``budget_s``) and at least ``warmup_s`` seconds of warm-up; the timed
    calls stop early once ``budget_s`` is spent (at least 3)."""
    if isinstance(model, nn.Module):
        model.eval()
    times: list[float] = []
    with pinned_threads(threads), torch.inference_mode():
        start = time.perf_counter()
        done = 0
        while done < 1 or (done < warmup and time.perf_counter() - start < budget_s):
            model(x)
            done += 1
        while time.perf_counter() - start < warmup_s and done < 1000:
            model(x)
            done += 1
        start = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start > budget_s and len(times) >= 3:
                break
    return statistics.median(times)


def compare(
    models: Mapping[str, Forward],
    x: torch.Tensor,
    *,
    rounds: int = 7,
    repeats: int = 20,
    threads: int | None = DEFAULT_THREADS,
    budget_s: float = 2.0,
) -> dict[str, dict[str, float]]:
    """Time every model on ``x`` in interleaved rounds (a, b, ..., a, b, ...).

    Returns per label ``median_ms`` (median of the per-round medians), ``min_ms`` and
    ``speedup``: the first model's time over this one's, the median of the per-round ratios.
    """
    runs: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for label, model in models.items():
            runs[label].append(
                median_ms(model, x, repeats=repeats, threads=threads, budget_s=budget_s)
            )
    first = next(iter(runs.values()))
    return {
        label: {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "speedup": statistics.median(a / b for a, b in zip(first, times, strict=True)),
        }
        for label, times in runs.items()
    }


def inference_form(model: nn.Module, example: torch.Tensor, *, optimize: bool = False) -> Any:
    """A traced, frozen TorchScript copy of ``model`` for inference (the model is untouched).

    ``optimize`` also converts convolution weights to channels-last and runs
    ``torch.jit.optimize_for_inference`` (oneDNN prepacked weights, fused conv + ReLU/add).
    Raises whatever tracing raises for a model TorchScript cannot trace. TorchScript is
    deprecated in favour of ``torch.compile``; it is used here because it needs no C++
    compiler run per model and its frozen graph shows which ops the model runs.
    """
    m = copy.deepcopy(model).eval()
    if optimize and any(isinstance(c, nn.Conv2d) for c in m.modules()):
        m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: see the docstring
        traced = torch.jit.trace(m, example, check_trace=False, strict=False)
        frozen = torch.jit.freeze(traced.eval())
        if optimize:
            frozen = torch.jit.optimize_for_inference(frozen)
        frozen(example)  # the first call specializes the graph
    return frozen


def latency(
    model: nn.Module,
    sample: torch.Tensor,
    batch_n: int = 256,
    *,
    threads: int | None = DEFAULT_THREADS,
) -> dict[str, float]:
    """``{"b1": ms, "bN": ms, "N": batch_n, "threads": n}`` on copies of a real input sample."""
    x1 = sample[:1]
    reps = -(-batch_n // len(sample))
    xn = sample.repeat(reps, *([1] * (sample.dim() - 1)))[:batch_n]
    return {
        "b1": round(median_ms(model, x1, threads=threads), 4),
        "bN": round(median_ms(model, xn, threads=threads), 4),
        "N": batch_n,
        "threads": threads if threads is not None else torch.get_num_threads(),
    }
