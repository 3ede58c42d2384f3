"""The front door: load_model, load_data, compress, evaluate, save, load.

Example:
    >>> import modelzip as mz
    >>> data = mz.load_data("digits")
    >>> model = mz.load_model("zoo:lenet300", data=data)          # trains and caches a baseline
    >>> result = mz.compress(model, data, "default", out="lenet.mzip")
    >>> result["ratio"], result["compressed"]["accuracy"]            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip import mzip, pipeline
from modelzip.codec.format import write_atomic
from modelzip.context import Context
from modelzip.errors import ModelError
from modelzip.eval.evaluate import check_fits
from modelzip.eval.evaluate import evaluate as _evaluate
from modelzip.eval.size import torch_save_bytes
from modelzip.factory import call_factory, factory_label, is_factory_spec
from modelzip.mzip import Skeleton
from modelzip.nn.constraints import remove_constraints
from modelzip.nn.split import split_packed_weights
from modelzip.recipe import Recipe, builtin_recipes
from modelzip.source import (
    ATTR,
    PRETRAINED_ZOO,
    ModelSource,
    input_record,
    source_of,
    user_source,
)
from modelzip.train import Trainer
from modelzip.zoo.data import DataBundle
from modelzip.zoo.data import load_data as _load_data

log = logging.getLogger("modelzip")

#: How zoo baselines are trained when no weights are given.
BASELINE_TRAINING: dict[str, dict[str, Any]] = {
    "lenet300": {"epochs": 20, "lr": 1e-3},
    "lenet5": {"epochs": 12, "lr": 1e-3},
}
CACHE_VERSION = 1


def load_data(spec: str | DataBundle, *, batch_size: int = 64, seed: int = 0) -> DataBundle:
    """A data set by spec: ``digits``, ``mnist5k`` or a .npz/.parquet/.csv file."""
    if isinstance(spec, DataBundle):
        return spec
    return _load_data(spec, batch_size=batch_size, seed=seed)


def data_for_model(model: nn.Module, data: DataBundle) -> DataBundle:
    """``data`` as ``model`` reads it: text data tokenized by the model's own tokenizer
    (``modelzip.zoo.text.for_model``); any other data, and text the model already reads,
    unchanged."""
    from modelzip.zoo.text import for_model

    return for_model(data, model)


def cache_dir() -> Path:
    """Where trained baselines are cached (``MODELZIP_CACHE`` overrides)."""
    return Path(os.environ.get("MODELZIP_CACHE") or Path.home() / ".cache" / "modelzip")


def load_model(
    spec: str | nn.Module,
    *,
    data: DataBundle | None = None,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    architecture: Skeleton | None = None,
) -> nn.Module:
    """Resolve a MODEL spec: ``zoo:NAME``, ``FILE.py:FACTORY`` (+ ``weights``), a Hugging Face
    folder or ``FILE.mzip`` (``architecture``: the caller's model for a file made from one).

    A zoo model without ``weights`` is trained on ``data``'s train split; that baseline is
    cached per (model, data, seed), so the next call loads it.
    """
    if isinstance(spec, nn.Module):
        return spec
    if spec.endswith(".mzip"):
        return load(spec, model=architecture)
    if spec in ("zoo:" + n for n in PRETRAINED_ZOO):
        source = ModelSource("zoo", spec[4:], {})
    elif spec.startswith("zoo:"):
        if data is None:
            raise ModelError(f"{spec} needs data to size its input and classes")
        source = ModelSource(
            "zoo", spec[4:], {"in_shape": list(data.sample_shape), "num_classes": data.num_classes}
        )
    elif is_factory_spec(spec):
        model = call_factory(spec)  # the user's own code, named by the user
        setattr(model, ATTR, user_source(model, factory_label(spec)))
        if weights is not None:
            _load_weights(model, Path(weights))
        return model.eval()
    elif Path(spec).is_dir():
        source = ModelSource.from_hf_folder(spec)
    elif spec.endswith(".onnx"):
        raise ModelError(
            f"{spec}: ONNX input models are not supported yet; use zoo:NAME, FILE.py:FACTORY, "
            "a Hugging Face model folder or FILE.mzip"
        )
    else:
        raise ModelError(
            f"unknown model {spec!r}; valid: zoo:lenet300, zoo:lenet5, zoo:minilm, "
            "FILE.py:FACTORY, a Hugging Face model folder, FILE.mzip"
        )
    model = source.build(pretrained=source.pretrained and weights is None)
    if weights is not None:
        _load_weights(model, Path(weights))
    elif source.kind == "zoo" and not source.pretrained:
        if data is None:
            raise ModelError(f"{spec} needs data to train its baseline")
        _trained_baseline(model, source, data, seed, progress)
    return model.eval()


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: not a state_dict readable with weights_only=True ({exc})"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(
            f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(s.strip() for s in str(exc).splitlines()[:2])
        raise ModelError(f"{path}: weights do not fit the model: {detail}") from None


def _data_key(data: DataBundle) -> str:
    h = hashlib.sha256(f"{data.name}|{data.sample_shape}|{data.sizes}".encode()).hexdigest()
    return h[:12]


def _trained_baseline(
    model: nn.Module, source: ModelSource, data: DataBundle, seed: int, progress: bool
) -> None:
    check_fits(model, data, f"zoo:{source.ref}")
    path = (
        cache_dir() / f"{source.ref}-{data.name}-{_data_key(data)}-seed{seed}-v{CACHE_VERSION}.pt"
    )
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return
        except Exception:  # a stale or damaged cache entry is retrained, never trusted
            log.warning("ignoring unreadable baseline cache %s", path)
    cfg = BASELINE_TRAINING.get(source.ref, {"epochs": 10, "lr": 1e-3})
    torch.manual_seed(seed)
    for m in model.modules():  # deterministic init per seed
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]  # stubs: Tensor | Module
    Trainer(progress=progress, seed=seed).fit(
        model,
        data.train,
        epochs=cfg["epochs"],
        lr=cfg["lr"],
        loss_fn=data.task.loss_fn(),  # cross-entropy, or MSE for regression targets
        description=f"baseline {source.ref}",
    )
    buf = _state_bytes(model)
    write_atomic(path, buf)


def _state_bytes(model: nn.Module) -> bytes:
    import io

    b = io.BytesIO()
    torch.save(model.state_dict(), b)
    return b.getvalue()


def evaluate(
    model: nn.Module | str,
    data: DataBundle | str,
    *,
    split: str = "test",
    measure_latency: bool = True,
    architecture: Skeleton | None = None,
) -> dict[str, Any]:
    """Accuracy, params, nonzero, bytes, bits_per_weight and latency of a model or .mzip
    (``architecture``: the caller's model for a .mzip made from one, as ``load``'s model=)."""
    data = load_data(data)
    file_bytes = None
    if isinstance(model, str | os.PathLike) and str(model).endswith(".mzip"):
        file_bytes = Path(model).stat().st_size if Path(model).is_file() else None
    if not isinstance(model, nn.Module):
        model = load_model(model, data=data, architecture=architecture)
    data = data_for_model(model, data)
    check_fits(model, data)
    reference = None
    if data.task.needs_reference:
        source = source_of(model)
        if source is None or not source.pretrained:
            raise ModelError(
                "embedding tasks compare with the original pretrained model; this model has "
                "none here (for a Hugging Face folder's .mzip pass the folder as its model)"
            )
        reference = source.build(pretrained=True)
    return _evaluate(
        model,
        data,
        split=split,
        file_bytes=file_bytes,
        measure_latency=measure_latency,
        reference=reference,
    )


def compress(
    model: nn.Module,
    data: DataBundle | str,
    recipe: Recipe | str,
    *,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    measure_latency: bool = True,
    on_stage: pipeline.StageHook | None = None,
    split: str = "test",
    stage_metrics: bool = True,
) -> dict[str, Any]:
    """Run a recipe on a model; write the .mzip when ``out`` is given.

    ``split`` is where the baseline and the result are measured (a search scores on ``val``
    and keeps ``test`` for the one policy it picks); ``stage_metrics=False`` skips the
    measurements after each stage. Neither changes the file the recipe produces.

    Returns ``baseline`` and ``compressed`` metrics, ``ratio`` (fp32 torch.save bytes /
    .mzip bytes), ``stages`` and ``out``. The compressed model is under ``model`` (not JSON).
    """
    data = data_for_model(model, load_data(data))
    recipe = Recipe.load(recipe)
    check_fits(model, data)
    original = pipeline.frozen_copy(model)  # the teacher, and the reference for embeddings
    model = copy.deepcopy(model)  # the caller's model stays as it was
    if source_of(model) is None:  # any nn.Module: the caller supplies its architecture
        setattr(model, ATTR, user_source(model))
    skeleton = None
    if not source_of(model).buildable:  # type: ignore[union-attr]
        mzip.mark_base(model)
        skeleton = copy.deepcopy(model)  # what a user passes to load the file back
    baseline = _evaluate(
        model,
        data,
        split=split,
        file_bytes=torch_save_bytes(model),
        measure_latency=measure_latency,
        reference=original,
    )
    # PyTorch's attention and recurrent layers keep their matrices where no layer method
    # reaches them: give them child layers (same outputs, same kernels)
    separated = split_packed_weights(model)
    if separated:
        log.info("modules given separate weight layers: %s", separated)
    ctx = Context(
        data=data, trainer=Trainer(progress=progress, seed=seed), teacher=original, seed=seed
    )
    torch.manual_seed(seed)
    compressed_model, stages = pipeline.run(
        model, recipe, ctx, on_stage=on_stage, evaluate_stages=stage_metrics
    )
    info: dict[str, Any] = {"recipe": recipe_record(recipe), "data": data.name, "seed": seed}
    recorded = input_record(data.example_inputs(1))
    if recorded is not None:  # so `export FILE.mzip` knows the input without --data
        info["input"] = recorded
    blob = mzip.to_bytes(compressed_model, info=info)
    if out is not None:
        write_atomic(out, blob)
    # Measure the model as a user gets it back from the file: honest, and the same numbers
    # a later `evaluate FILE.mzip` reports.
    deployed, _ = mzip.from_bytes(blob, model=_load_skeleton(compressed_model, skeleton))
    compressed = _evaluate(
        deployed,
        data,
        split=split,
        file_bytes=len(blob),
        measure_latency=measure_latency,
        reference=original,
    )
    return {
        "data": data.name,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "baseline": baseline,
        "compressed": compressed,
        "ratio": round(baseline["bytes"] / compressed["bytes"], 3),
        "accuracy_delta": round(compressed["accuracy"] - baseline["accuracy"], 6),
        "stages": stages,
        # attention / recurrent modules given separate weight layers (or why not)
        **({"split_modules": separated} if separated else {}),
        "out": str(out) if out is not None else None,
        "model": deployed,
    }


def recipe_record(recipe: Recipe) -> str | dict[str, Any]:
    """How a file records its recipe: a built-in one by name, any other one whole."""
    if recipe.name in builtin_recipes() and Recipe.load(recipe.name) == recipe:
        return recipe.name
    return recipe.to_dict()


def _load_skeleton(compressed: nn.Module, original: nn.Module | None) -> nn.Module | None:
    """The architecture to load a compressed user model's bytes into: the model as the user
    gave it (what they pass to ``load``), or, when a stage replaced the whole model by one of
    another architecture (a distillation student), a copy of it with its constraints baked
    in (every value still comes from the file). None for models modelzip builds itself."""
    source = source_of(compressed)
    if source is None or source.buildable:
        return None
    base = getattr(compressed, mzip.BASE_ATTR, None)
    if original is not None and base == getattr(original, mzip.BASE_ATTR, None):
        return original
    return remove_constraints(copy.deepcopy(compressed))


def save(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write a (compressed) model to a .mzip file atomically; returns its size in bytes.
    Any ``nn.Module`` works; one modelzip did not build loads back with ``load(path,
    model=...)``."""
    return mzip.save(model, path)


def load(path: str | os.PathLike[str], *, model: Skeleton | None = None) -> nn.Module:
    """Read a .mzip back into a model (eval mode), bit-exact weights.

    ``model`` is the architecture for a file made from a user model: a module (filled in
    place, as ``load_state_dict`` does) or a factory; zoo and Hugging Face files need none.

    Example:
        >>> net = mz.load("m.mzip", model=MyNet())  # doctest: +SKIP
    """
    loaded, _ = mzip.load(path, model=model)
    return loaded


__all__ = ["compress", "evaluate", "load", "load_data", "load_model", "save"]
