"""The one ``evaluate``: accuracy, size and latency of a model on a data split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.errors import DataError
from modelzip.eval.latency import latency
from modelzip.eval.size import count_params, torch_save_bytes
from modelzip.zoo.data import DataBundle


def accuracy(model: nn.Module, loader: Any) -> float:
    """Top-1 accuracy (0..1) of a classifier over a loader."""
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            pred = model(x).argmax(dim=-1)
            correct += int((pred == y).sum())
            total += len(y)
    if total == 0:
        raise DataError("the evaluation split is empty")
    return correct / total


def cosine_mean(model: nn.Module, reference: nn.Module, loader: Any) -> float:
    """Mean cosine similarity between the model's outputs and the reference model's."""
    model.eval()
    reference.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, _ in loader:
            cos = torch.nn.functional.cosine_similarity(model(x), reference(x), dim=-1)
            total += float(cos.sum())
            count += len(cos)
    if count == 0:
        raise DataError("the evaluation split is empty")
    return total / count


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
    x = data.example(2)
    try:
        with torch.inference_mode():
            out = model.eval()(x)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0]
        raise DataError(
            f"data {data.name!r} (sample shape {tuple(data.sample_shape)}) does not fit "
            f"{model_name}: {msg}"
        ) from None
    if data.task == "embedding":
        if out.dim() != 2:
            raise DataError(f"{model_name} outputs shape {tuple(out.shape)}, not (batch, dim)")
        return
    if out.dim() != 2 or out.shape[1] < data.num_classes:
        raise DataError(
            f"{model_name} outputs shape {tuple(out.shape)} but data {data.name!r} has "
            f"{data.num_classes} classes"
        )


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
        reference: for embedding tasks, the original model whose outputs are the target;
            ``accuracy`` is then ``cosine_mean``, the mean cosine similarity to them.

    Returns:
        ``accuracy``, ``params``, ``nonzero``, ``bytes``, ``bits_per_weight`` and
        ``latency_ms`` ({"b1", "bN", "N"}) as in DESIGN.md.

    Example:
        >>> evaluate(model, load_data("digits"))["accuracy"]        # doctest: +SKIP
        0.97
    """
    params, nonzero = count_params(model)
    size = file_bytes if file_bytes is not None else torch_save_bytes(model)
    retrieval: dict[str, float] = {}
    if data.task == "embedding":
        if reference is None:
            raise DataError(
                f"{data.name} is an embedding task: evaluation needs the reference model"
            )
        retrieval = embedding_fidelity(model, reference, data.loader(split))
        score = retrieval["cosine_mean"]
    else:
        score = accuracy(model, data.loader(split))
    out: dict[str, Any] = {
        "accuracy": score,
        "split": split,
        "params": params,
        "nonzero": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "bytes": size,
        "bits_per_weight": round(8 * size / params, 4) if params else 0.0,
    }
    if data.task == "embedding":
        out.update(retrieval)
    if measure_latency:
        out["latency_ms"] = latency(model, data.example(64), batch_n)
    return out


__all__ = ["accuracy", "check_fits", "evaluate", "torch_save_bytes"]
