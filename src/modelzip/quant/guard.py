"""The end-to-end check of a model's static int8 layers: when the model's output on the
calibration data is too far from float, layers get their float inputs back (their int8
weights stay) until it is not.

Why: each layer is planned alone (``modelzip.quant.plan``: its own output SQNR at least
``min_sqnr_db``), but in a deep network the errors of many such layers add up. Measured on a
torchvision EfficientNet-B0 (82 convolutions, trained on 32x32 MNIST digits): every layer
alone was within bounds, the model's output was at 14.7 dB SQNR to float and test accuracy
fell 1.4 points (in an earlier run 14.4 dB and 7.3 points); no single layer caused most of
it (``benchmarks/results/vision_int8.md``).

How: for every integer layer, the model's output SQNR with that one layer back on float inputs
(its leave-one-out gain); then, largest gain first, layers go back one at a time, measuring
again after each, until the output reaches ``floor_db`` or ``max_share`` of the layers are
back (then the best state seen is kept). ``N + k`` passes over the calibration batches for
``N`` integer layers and ``k`` layers restored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from modelzip.ops import affine
from modelzip.quant import convert


def _output_sqnr(
    model: nn.Module,
    batches: list[torch.Tensor],
    ref: torch.Tensor,
    prepare: Callable[[], object] | None,
) -> float:
    if prepare is not None:
        prepare()
    with torch.inference_mode():
        out = torch.cat([model(x).float() for x in batches])
    return float(affine.sqnr_db(ref, out))


def restore_until(
    model: nn.Module,
    layers: Mapping[str, tuple[nn.Module, nn.Module]],
    batches: list[torch.Tensor],
    ref: torch.Tensor,
    *,
    floor_db: float,
    max_share: float = 0.5,
    prepare: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Put float-input layers back in ``model`` until its output SQNR to ``ref`` (the float
    model's outputs on ``batches``) is at least ``floor_db``.

    ``layers`` maps each integer layer's name to ``(integer module, float module)``, the
    integer one being in the model. ``prepare()`` runs before each measurement, with the
    layers swapped as they are to be measured (e.g. to chain the integer layers: the model
    measured is the one that will run). Returns the notes: the SQNR before and after, and per
    layer restored the gain measured when it went back. Layers not restored stay integer.
    """
    was_training = model.training
    model.eval()
    try:
        before = _output_sqnr(model, batches, ref, prepare)
        notes: dict[str, Any] = {"floor_db": floor_db, "before_db": round(before, 2)}
        if before >= floor_db or not layers:
            notes["after_db"] = notes["before_db"]
            notes["restored"] = {}
            return notes
        gains: dict[str, float] = {}
        for name, (int8, flt) in layers.items():
            convert.replace(model, name, flt)
            gains[name] = _output_sqnr(model, batches, ref, prepare) - before
            convert.replace(model, name, int8)
        budget = max(1, int(max_share * len(layers)))
        order = sorted(gains, key=lambda n: -gains[n])[:budget]
        best, best_k = before, 0
        for k, name in enumerate(order, start=1):
            convert.replace(model, name, layers[name][1])
            current = _output_sqnr(model, batches, ref, prepare)
            if current > best:
                best, best_k = current, k
            if current >= floor_db:
                break
        for name in order[best_k:]:  # undo what did not help
            convert.replace(model, name, layers[name][0])
    finally:
        model.train(was_training)
    notes["after_db"] = round(best, 2)
    notes["restored"] = {
        name: f"model output SQNR {before:.1f} dB < {floor_db:g} dB on calibration data; float "
        f"inputs alone gained {gains[name]:+.1f} dB"
        for name in order[:best_k]
    }
    if best < floor_db:
        notes["floor_missed"] = (
            f"{best:.1f} dB with {best_k} of {len(layers)} layers back on float inputs "
            f"(at most {budget} may go back: max share {max_share:g})"
        )
    return notes


__all__ = ["restore_until"]
