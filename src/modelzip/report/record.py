"""The report record: a compress result plus what the report draws, all plain JSON.

``report.json`` is this record; the HTML and Markdown reports are rendered from it alone, so
``modelzip report RUN.json`` reproduces the page of a finished run without its models.
Keys beyond the compress result (documented in docs/REPORT.md):

- ``environment``: the machine the latency was measured on (CPU, flags, threads, versions).
- ``file``: the ``.mzip``'s total, payload and metadata bytes.
- ``layers``: one row per layer: params, sparsity, grid bits, codec, bytes, share of the file.
- ``histograms``: weight histograms of the largest layers before and after, with centroids.
- ``sparsity_map``: the zero pattern of one layer, as block densities.
- ``sensitivity``: per-layer accuracy curves (``modelzip sensitivity --json``), optional.
- ``pareto``: points ``{"bytes", "accuracy"}`` of a search's Pareto front, optional.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.codec.inspect import inspect_detail, layer_of, layer_summary
from modelzip.errors import ConfigError

HIST_LAYERS = 4
HIST_BINS = 72
#: The sparsity map is at most this many block rows and columns.
MAP_ROWS, MAP_COLS = 60, 120


def _hist(values: torch.Tensor, lo: float, hi: float) -> dict[str, Any]:
    counts = torch.histc(values.float(), bins=HIST_BINS, min=lo, max=hi)
    edges = torch.linspace(lo, hi, HIST_BINS + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": [int(c) for c in counts],
        "values": int(values.numel()),
    }


def histograms(
    after: Mapping[str, dict[str, Any]],
    before: Mapping[str, torch.Tensor] | None,
    *,
    layers: int = HIST_LAYERS,
) -> list[dict[str, Any]]:
    """Histograms of the ``layers`` largest weight tensors before and after (nonzero values
    after, since pruned zeros would flatten the picture; their count is kept), on shared bins,
    with the codebook centroids when the tensor is stored on a codebook."""
    weights = [
        (name, d)
        for name, d in after.items()
        if d["value"].is_floating_point() and d["value"].dim() >= 2
    ]
    weights.sort(key=lambda item: -item[1]["value"].numel())
    out = []
    for name, d in weights[:layers]:
        value = d["value"].detach().float().reshape(-1)
        nonzero = value[value != 0]
        old = None
        if before is not None and name in before and before[name].shape == d["value"].shape:
            old = before[name].detach().float().reshape(-1)
        pool = [t for t in (nonzero, old) if t is not None and t.numel()]
        if not pool:
            continue
        lo = min(float(t.min()) for t in pool)
        hi = max(float(t.max()) for t in pool)
        if hi <= lo:
            lo, hi = lo - 1e-3, hi + 1e-3
        out.append(
            {
                "tensor": name,
                "layer": layer_of(name),
                "after": _hist(nonzero, lo, hi),
                "zeros_after": int(value.numel() - nonzero.numel()),
                "before": _hist(old, lo, hi) if old is not None else None,
                "centroids": d["codebook"],
                "bits": d["bits"],
            }
        )
    return out


def sparsity_map(after: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Block densities (fraction of nonzero weights) of the most pruned large weight matrix
    (conv kernels as out_channels x the rest), at most MAP_ROWS x MAP_COLS blocks."""
    best: tuple[float, int, str, torch.Tensor] | None = None
    for name, d in after.items():
        v = d["value"]
        if v.dim() < 2 or v.numel() < 64:
            continue
        m = v.detach().reshape(v.shape[0], -1)
        key = (round(float((m == 0).float().mean()), 2), m.numel(), name, m)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        return None
    sparsity, _, name, m = best
    rows, cols = m.shape
    br, bc = math.ceil(rows / MAP_ROWS), math.ceil(cols / MAP_COLS)
    nz = (m != 0).float()
    pad = torch.zeros(math.ceil(rows / br) * br, math.ceil(cols / bc) * bc)
    counts = torch.zeros_like(pad)
    pad[:rows, :cols] = nz
    counts[:rows, :cols] = 1
    r, c = pad.shape[0] // br, pad.shape[1] // bc
    dens = pad.reshape(r, br, c, bc).sum((1, 3)) / counts.reshape(r, br, c, bc).sum((1, 3))
    return {
        "tensor": name,
        "layer": layer_of(name),
        "shape": [rows, cols],
        "block": [br, bc],
        "sparsity": round(float((m == 0).float().mean()), 6),
        "density": [[round(float(x), 3) for x in row] for row in dens],
    }


def check_pareto(points: Any) -> list[dict[str, float]]:
    """Validate a Pareto front: a list of ``{"bytes": > 0, "accuracy": number}`` objects."""
    if not isinstance(points, list):
        raise ConfigError(f"pareto must be a list of {{bytes, accuracy}} objects, got {points!r}")
    out = []
    for i, p in enumerate(points):
        if (
            not isinstance(p, dict)
            or not isinstance(p.get("bytes"), int | float)
            or not isinstance(p.get("accuracy"), int | float)
            or p["bytes"] <= 0
        ):
            raise ConfigError(
                f"pareto[{i}] must be an object with bytes > 0 and accuracy numbers, got {p!r}"
            )
        out.append({**p, "bytes": p["bytes"], "accuracy": p["accuracy"]})
    return out


def check_sensitivity(sens: Any) -> dict[str, Any]:
    """Validate a ``modelzip sensitivity --json`` object (sparsities + per-layer accuracy)."""
    ok = (
        isinstance(sens, dict)
        and isinstance(sens.get("sparsities"), list)
        and isinstance(sens.get("layers"), dict)
        and all(
            isinstance(row, dict)
            and isinstance(row.get("accuracy"), list)
            and len(row["accuracy"]) == len(sens["sparsities"])
            for row in sens["layers"].values()
        )
    )
    if not ok:
        raise ConfigError(
            "sensitivity must be the object `modelzip sensitivity --json` prints "
            "(sparsities: [...], layers: {name: {accuracy: [one per sparsity]}})"
        )
    return sens


def build_record(
    result: Mapping[str, Any],
    *,
    mzip: bytes | None = None,
    before: nn.Module | Mapping[str, torch.Tensor] | None = None,
    environment: Mapping[str, Any] | None = None,
    sensitivity: Mapping[str, Any] | None = None,
    pareto: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report record of a compress ``result`` (the ``model`` key is dropped).

    Args:
        result: what ``modelzip.compress`` returned (or its JSON).
        mzip: the written ``.mzip`` bytes: per-layer table, histograms, sparsity map.
        before: the model (or state_dict) before compression, for the "before" histograms.
        environment: the machine the latency was measured on (``eval.machine.machine()``).
        sensitivity: per-layer sensitivity curves to draw.
        pareto: a search's Pareto front, ``[{"bytes", "accuracy"}, ...]``.
    """
    record = {k: v for k, v in result.items() if k != "model"}
    if environment is not None:
        record["environment"] = dict(environment)
    if sensitivity is not None:
        record["sensitivity"] = check_sensitivity(dict(sensitivity))
    if pareto is not None:
        record["pareto"] = check_pareto(pareto)
    elif "pareto" in record:
        record["pareto"] = check_pareto(record["pareto"])
    if "sensitivity" in record:
        check_sensitivity(record["sensitivity"])
    if mzip is not None:
        info, detail = inspect_detail(mzip)
        old = before.state_dict() if isinstance(before, nn.Module) else before
        record["file"] = {
            k: info[k] for k in ("bytes", "payload_bytes", "metadata_bytes", "version")
        }
        record["layers"] = layer_summary(info, detail)
        record["histograms"] = histograms(detail, old)
        record["sparsity_map"] = sparsity_map(detail)
    return record


def complete_from_file(record: dict[str, Any], base: Path) -> dict[str, Any]:
    """Fill the per-layer parts of a record that lacks them (a ``compress --json`` output)
    from the ``.mzip`` it names under ``out``, when that file exists."""
    if "layers" in record or not record.get("out"):
        return record
    path = Path(record["out"])
    path = path if path.is_absolute() or path.is_file() else base / path
    if not path.is_file():
        return record
    return build_record(record, mzip=path.read_bytes())
