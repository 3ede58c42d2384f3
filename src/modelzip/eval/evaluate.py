"""The one ``evaluate``: accuracy, size and latency of a model on a data split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.bundle import DataBundle
from modelzip.errors import DataError
from modelzip.eval.latency import latency
from modelzip.eval.size import count_params, torch_save_bytes
from modelzip.task import CLASSIFICATION, EMBEDDING, run_model


def accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 accuracy (0..1) of a classifier over a loader."""
    return CLASSIFICATION.score(model, loader)


def cosine_mean(model: nn.Module, reference: nn.Module, loader: Any) -> float:
    """Mean cosine similarity between the model's outputs and the reference model's."""
    return EMBEDDING.score(model, loader, reference=reference)


def embedding_fidelity(model: nn.Module, reference: nn.Module, loader: Any) -> dict[str, float]:
    """Mean/min cosine to the reference's embeddings and top-10 neighbour overlap."""
    from modelzip.eval.retrieval import fidelity

    model.eval()
    reference.eval()
    ours, theirs = [], []
    with torch.inference_mode():
        for x, _ in loader:
            ours.append(model(x).float())
            theirs.append(reference(x).float())
    if not ours:
        raise DataError("the evaluation split is empty")
    return fidelity(torch.cat(ours), torch.cat(theirs))


def check_fits(model: nn.Module, data: DataBundle, model_name: str = "the model") -> None:
    """Run one real batch through the model; a shape mismatch becomes one clear line."""
    x = data.example_inputs(2)
    try:
        with torch.inference_mode():
            out = run_model(model.eval(), x)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise DataError(
            f"data {data.name!r} (sample shape {tuple(data.sample_shape)}) does not fit "
            f"{model_name}: {msg}"
        ) from None
    try:
        data.task.check_output(out, data.num_classes, model_name)
    except DataError as exc:
        raise DataError(f"{exc} (data {data.name!r})") from None


def evaluate(
    model: nn.Module,
    data: DataBundle,
    *,
    split: str = "test",
    file_bytes: int | None = None,
    measure_latency: bool = True,
    batch_n: int = 256,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    """Measure what matters about a model.

    Args:
        model: the model to measure (constrained or plain).
        data: the task's data; accuracy is on ``split``.
        file_bytes: size of the model's file; default is the fp32 ``torch.save`` size.
        measure_latency: skip the latency timing when False (tests, inner loops).
        batch_n: the large batch size for ``latency_ms.bN``.
        reference: the original model, for tasks whose metric compares with its outputs
            (embedding: ``accuracy`` is then ``cosine_mean``, the mean cosine similarity).

    Returns:
        ``accuracy``, ``params``, ``nonzero``, ``bytes``, ``bits_per_weight`` and
        ``latency_ms`` ({"b1", "bN", "N"}) as in DESIGN.md.

    Example:
        >>> evaluate(model, load_data("digits"))["accuracy"]        # doctest: +SKIP
        0.97
    """
    params, nonzero = count_params(model)
    size = file_bytes if file_bytes is not None else torch_save_bytes(model)
    task = data.task
    if task.needs_reference and reference is None:
        raise DataError(f"{data.name} is an {task.name} task: evaluation needs the reference model")
    retrieval: dict[str, float] = {}
    if task is EMBEDDING and reference is not None:  # retrieval fidelity: cosine mean/min, top-10
        retrieval = embedding_fidelity(model, reference, data.loader(split))
        score = retrieval["cosine_mean"]
    else:
        score = task.score(model, data.loader(split), reference=reference)
    out: dict[str, Any] = {
        "accuracy": score,
        "split": split,
        "params": params,
        "nonzero": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "bytes": size,
        "bits_per_weight": round(8 * size / params, 4) if params else 0.0,
    }
    out[task.metric] = score  # "accuracy" holds the task's metric too (DESIGN.md's JSON keys)
    out.update(retrieval)
    if measure_latency:
        example = data.example_inputs(64)
        if isinstance(example, torch.Tensor):  # latency is timed for one-input models
            out["latency_ms"] = latency(model, example, batch_n)
    return out


__all__ = ["accuracy", "check_fits", "evaluate", "torch_save_bytes"]
