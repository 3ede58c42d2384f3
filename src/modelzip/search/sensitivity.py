"""Per-layer pruning sensitivity: prune one layer alone at several sparsities, measure accuracy.

The curves tell a user which layers tolerate high sparsity and which must be spared — the
input for choosing per-layer targets (``sparsity: {default: 0.9, fc3: 0.5}``). Accuracy is
measured on the ``val`` split by default, since the curves are used to choose.

Example:
    >>> result = sensitivity(model, load_data("digits"), sparsities=(0.5, 0.9))  # doctest: +SKIP
    >>> result["layers"]["fc1"]["accuracy"]                                         # doctest: +SKIP
    [0.97, 0.95]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from modelzip.bundle import DataBundle
from modelzip.context import Context
from modelzip.errors import ConfigError, UnsupportedError
from modelzip.methods.prune import PruneConfig, prune
from modelzip.nn.split import split_packed_weights
from modelzip.progress import bar
from modelzip.targets import select
from modelzip.train import Trainer

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def sensitivity(
    model: nn.Module,
    data: DataBundle,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
    criterion: str = "magnitude",
    pattern: str = "unstructured",
    split: str = "val",
    max_drop: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of the model with each selected layer pruned alone, per sparsity.

    Returns ``baseline`` (accuracy unpruned), ``sparsities``, and per layer ``params``,
    ``accuracy`` (one value per sparsity), ``drop`` (baseline minus accuracy) and
    ``max_sparsity`` (the highest tried sparsity whose drop is at most ``max_drop``; 0.0
    when none is). With ``pattern="channel"`` the sparsity is the fraction of a layer's
    output channels removed by surgery; layers that cannot lose channels are listed in
    ``skipped`` with the reason.
    """
    if pattern not in ("unstructured", "channel"):
        raise ConfigError(f"pattern must be unstructured or channel, got {pattern!r}")
    sparsities = [float(s) for s in sparsities]
    if not sparsities:
        raise ConfigError("sparsities: give at least one value in [0, 1)")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sparsities: each value must be in [0, 1), got {s}")
    model = copy.deepcopy(model)  # with the layers compress will find (nn.split)
    split_packed_weights(model)
    chosen = select(model, layers, example=data.example_inputs)
    loader = data.loader(split)
    original = copy.deepcopy(model).eval()  # the reference of tasks that compare outputs
    task = data.task

    def score(m: nn.Module) -> float:
        return task.score(m, loader, reference=original)

    base = score(model)
    out_layers: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with bar("sensitivity", len(chosen) * len(sparsities), enabled=progress) as advance:
        for name, layer in chosen.items():
            accs = []
            for s in sparsities:
                cfg = PruneConfig.parse(
                    {
                        "sparsity": s,
                        "scope": "layer",
                        "layers": [name],
                        "criterion": criterion,
                        "pattern": pattern,
                    },
                    "sensitivity",
                )
                trial = copy.deepcopy(model)
                ctx = Context(
                    data=data,
                    trainer=Trainer(progress=False, seed=seed),
                    teacher=original,
                    seed=seed,
                )
                try:
                    accs.append(round(score(prune(trial, cfg, ctx)), 6))
                except UnsupportedError as exc:  # e.g. the output layer cannot lose channels
                    skipped[name] = str(exc)
                    break
                finally:
                    advance(description=f"sensitivity {name} {s:.0%}")
            if name in skipped:
                continue
            drops = [round(base - a, 6) for a in accs]
            ok = [s for s, d in zip(sparsities, drops, strict=True) if d <= max_drop]
            out_layers[name] = {
                "params": cast(torch.Tensor, layer.weight).numel(),
                "accuracy": accs,
                "drop": drops,
                "max_sparsity": max(ok) if ok else 0.0,
            }
    if not out_layers:
        raise UnsupportedError(f"no selected layer can be pruned: {skipped}")
    return {
        "split": split,
        "metric_label": task.label,  # what "accuracy" holds: accuracy, cosine mean, R^2
        "criterion": criterion,
        "pattern": pattern,
        "skipped": skipped,
        "max_drop": max_drop,
        "baseline": round(base, 6),
        "sparsities": sparsities,
        "layers": out_layers,
    }
