"""Calibration plumbing: run a few batches, watch chosen layers, pick activation ranges.

The math (histograms, observers, qparams) lives in ``modelzip.ops``; this module only walks
layers with forward hooks and feeds them data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from modelzip.context import Context
from modelzip.errors import DataError
from modelzip.ops import affine, observers
from modelzip.progress import bar


@dataclass
class LayerStats:
    """What calibration saw of one layer: input/output ranges and the input histogram."""

    in_lo: float = float("inf")
    in_hi: float = float("-inf")
    out_lo: float = float("inf")
    out_hi: float = float("-inf")
    hist: observers.Histogram | None = None

    @property
    def seen(self) -> bool:
        """Whether the layer ran at all during calibration."""
        return self.in_lo <= self.in_hi


def calibration_batches(ctx: Context, n: int, split: str = "val") -> list[torch.Tensor]:
    """Up to ``n`` input batches of ``split`` (``val``; ``train`` where a method asks for it;
    never test data), in the split's first-epoch order (``first_epoch``)."""
    data = getattr(ctx, "data", None)
    what = "activation calibration" if split == "val" else "calibration"
    if data is None or split not in getattr(data, "loaders", {}):
        if split == "val":
            raise DataError(
                "activation calibration needs data: run the recipe with --data (a validation "
                "split supplies the calibration_batches)"
            )
        raise DataError(f"calibration_split {split!r} needs data with a {split} split (--data)")
    out: list[torch.Tensor] = []
    for x, _ in first_epoch(data.loaders[split]):
        out.append(x)
        if len(out) >= n:
            break
    if not out:
        raise DataError(f"{what} needs data: the {split} split of {data.name!r} is empty")
    return out


def first_epoch(loader: DataLoader) -> DataLoader:
    """``loader`` in the order of its first epoch, however often it was iterated before.

    A shuffled train loader draws a new order each time it is read (baseline training, an
    earlier stage), so calibrating on "the first batches" would depend on what ran before:
    on whether the baseline came from the cache, say. A fresh loader seeded like the first
    epoch gives the same batches every time. Loaders that do not shuffle with a seeded
    generator are returned as they are."""
    sampler = getattr(loader, "sampler", None)
    gen = getattr(sampler, "generator", None)
    if not isinstance(sampler, RandomSampler) or gen is None or sampler.replacement:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(gen.initial_seed()),
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
    )


@contextmanager
def _hooks(layers: dict[str, nn.Module], fn: Callable) -> Iterator[None]:
    handles = [
        m.register_forward_hook(lambda mod, a, y, n=n: fn(n, mod, a[0], y))
        for n, m in layers.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(
    model: nn.Module, batches: list[torch.Tensor], advance: Callable[[], None] | None = None
) -> None:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
            if advance is not None:
                advance()
    model.train(was_training)


def observe(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[torch.Tensor],
    *,
    progress: bool = False,
) -> dict[str, LayerStats]:
    """Input/output min-max and an input histogram of every layer (two passes); a progress
    bar on a terminal when ``progress``."""
    with bar("calibrate", 2 * len(batches), enabled=progress) as advance:
        return _observe(model, layers, batches, advance)


def _observe(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[torch.Tensor],
    advance: Callable[[], None],
) -> dict[str, LayerStats]:
    stats = {n: LayerStats() for n in layers}

    def ranges(name: str, _m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        s = stats[name]
        s.in_lo, s.in_hi = min(s.in_lo, float(x.amin())), max(s.in_hi, float(x.amax()))
        s.out_lo, s.out_hi = min(s.out_lo, float(y.amin())), max(s.out_hi, float(y.amax()))

    with _hooks(layers, ranges):
        _run(model, batches, advance)
    for s in stats.values():
        s.hist = observers.new_histogram(s.in_lo, s.in_hi)

    def fill(name: str, _m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        observers.add(cast(observers.Histogram, stats[name].hist), x)  # set by the first pass

    with _hooks(layers, fill):
        _run(model, batches, advance)
    return stats


def input_qparams(
    stats: LayerStats, observer: str, bits: int = 8, percentile: float = 99.99
) -> tuple[float, int, tuple[float, float]]:
    """(scale, zero point, chosen range) of a layer's uint8 input."""
    hist = cast(observers.Histogram, stats.hist)  # filled by calibration
    lo, hi = observers.choose_range(hist, observer, bits, percentile=percentile)
    scale, zp = affine.qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric=False)
    return float(scale), int(zp), (lo, hi)


def output_qparams(stats: LayerStats, bits: int = 8) -> tuple[float, int]:
    """Min/max qparams of a layer's output: outputs returned as float (logits) are never
    clipped, so the largest values cannot collapse into ties."""
    scale, zp = affine.qparams_from_range(
        torch.tensor(stats.out_lo), torch.tensor(stats.out_hi), bits, symmetric=False
    )
    return float(scale), int(zp)


def _layer_op(m: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.Conv1d):
        return F.conv1d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w)


def correct_biases(
    model: nn.Module,
    layers: dict[str, nn.Module],
    float_weights: dict[str, torch.Tensor],
    in_qparams: dict[str, tuple[float, int]],
    batches: list[torch.Tensor],
    bits: int = 8,
) -> dict[str, float]:
    """Empirical bias correction: subtract each layer's mean output error per channel.

    For every calibration input x of a layer, the error is (quantized weights on quantized x)
    minus (float weights on float x), averaged over the batch and spatial positions; the bias
    absorbs it (Nagel et al., 2019). Returns the mean |correction| per layer. Layers without a
    bias get one (their replacement integer layer stores it).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)

    def measure(name: str, m: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> None:
        xq = x
        if name in in_qparams:
            s, zp = in_qparams[name]
            xq = affine.fake_quantize(x, torch.tensor(s), torch.tensor(float(zp)), bits, False)
        err = _layer_op(m, xq, cast(torch.Tensor, m.weight)) - _layer_op(m, x, float_weights[name])
        # channels: dim 1 of a convolution's output, the last dim of a Linear's (any rank)
        ch = err.dim() - 1 if isinstance(m, nn.Linear) else 1
        dims = [d for d in range(err.dim()) if d != ch]
        sums[name] = sums.get(name, 0) + err.sum(dim=dims).double()
        counts[name] += err.numel() // err.shape[ch]

    with _hooks(layers, measure):
        _run(model, batches)
    report = {}
    with torch.no_grad():
        for name, m in layers.items():
            if name not in sums:
                continue
            delta = (sums[name] / max(counts[name], 1)).float()
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros_like(delta))
            cast(torch.Tensor, m.bias).sub_(delta)
            report[name] = float(delta.abs().mean())
    return report


def output_ranges(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """Min/max of each layer's output (after bias correction changed them)."""
    out: dict[str, tuple[float, float]] = {}

    def fn(name: str, _m: nn.Module, _x: torch.Tensor, y: torch.Tensor) -> None:
        lo, hi = out.get(name, (float("inf"), float("-inf")))
        out[name] = (min(lo, float(y.amin())), max(hi, float(y.amax())))

    with _hooks(layers, fn):
        _run(model, batches)
    return out
