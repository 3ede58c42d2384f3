"""Models to .mzip bytes and back: the architecture from the caller or a closed allow-list,
the tensors from ``codec.pack``, the bytes from ``codec.format``.

Loading never imports, executes or calls anything the file names. The architecture of a
model the user wrote comes from the caller (``load(path, model=MyNet())``), as with
``load_state_dict``; the file adds only declarative specs of the modules compression changed
(smaller layers after surgery, modelzip's low-rank and integer layers), built from
``modelzip.nn.registry.MODULE_TYPES``. Zoo models and Hugging Face encoders (their
``config.json`` values) are built by modelzip itself.

Example:
    >>> blob = to_bytes(model)                          # doctest: +SKIP
    >>> back, header = from_bytes(blob, model=MyNet())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.codec import format as fmt
from modelzip.codec.format import EXPANSION, MIN_BUDGET
from modelzip.codec.pack import decode_state, encode_tensors
from modelzip.errors import FormatError, ModelError
from modelzip.nn.registry import MODULE_TYPES
from modelzip.nn.specs import apply_architecture, architecture, build
from modelzip.source import (
    ATTR,
    INPUT_ATTR,
    ModelSource,
    read_input_record,
    source_of,
    user_source,
)

#: The architecture a user model had before compression (what the file's specs diff against).
BASE_ATTR = "modelzip_base_architecture"
#: What ``load(..., model=...)`` takes: a skeleton module or a zero-argument factory.
Skeleton = nn.Module | Callable[[], nn.Module]


def mark_base(model: nn.Module) -> nn.Module:
    """Record ``model``'s current architecture as the one its .mzip will diff against (the
    caller's skeleton at load time). Returns the model."""
    setattr(model, BASE_ATTR, architecture(model))
    return model


def to_bytes(model: nn.Module, *, info: dict[str, Any] | None = None) -> bytes:
    """Serialize a (constrained) model into .mzip bytes. Any ``nn.Module`` works; one that
    modelzip did not build loads back with its architecture passed to ``from_bytes``."""
    source = source_of(model) or user_source(model)
    records, payloads = encode_tensors(model)
    header = {
        "source": source.to_json(),
        "arch": changed_architecture(model, source),
        "info": info or {},
        "t": records,
    }
    return fmt.write(header, payloads)


@functools.lru_cache(maxsize=8)
def _source_architecture(source_json: str) -> dict[str, Any]:
    return architecture(ModelSource.from_json(json.loads(source_json)).build(empty=True))


def changed_architecture(model: nn.Module, source: ModelSource) -> dict[str, Any]:
    """Specs of the modules that differ from the architecture the loader starts from: what
    the source builds, or for a user model the architecture recorded by ``mark_base`` (all
    describable modules when none was recorded)."""
    if source.buildable:
        base = _source_architecture(json.dumps(source.to_json(), sort_keys=True))
    else:
        base = getattr(model, BASE_ATTR, None) or {}
    return {name: spec for name, spec in architecture(model).items() if base.get(name) != spec}


def save(
    model: nn.Module, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None
) -> int:
    """Write the model to ``path`` atomically; returns the file size in bytes."""
    data = to_bytes(model, info=info)
    fmt.write_atomic(path, data)
    return len(data)


def _positive_ints(obj: Any) -> list[int]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int):
        return [obj] if obj > 0 else []
    if isinstance(obj, list | tuple):
        return [i for x in obj for i in _positive_ints(x)]
    if isinstance(obj, dict):
        return [i for x in obj.values() for i in _positive_ints(x)]
    return []


def check_build_size(header: dict[str, Any], budget: int) -> None:
    """Refuse module specs / source arguments that would allocate more than ``budget`` elements.

    Building a module allocates its parameters before any stored tensor is loaded, so a
    hostile ``Linear(10**9, 10**9)`` must be stopped here. A zoo source's positive integer
    arguments are multiplied (their product bounds the parameter count of every zoo model); a
    module spec is built on the meta device, which allocates nothing, and its parameters and
    buffers counted. (Multiplying a spec's integers too refused real files: a low-rank
    ``fc1`` of 800 x 500 at rank 250 has 325,500 weights, the product is 100 million, past
    the budget of a 14 KB LeNet-5 file at 125x.)
    """
    source = header["source"]
    # Only zoo sizes are positive-integer arguments; a Hugging Face config is sized by
    # building it on the meta device (``zoo.hf.encoder_from_config``), a user source has none.
    kwargs = source.get("kwargs", {}) if source.get("kind") == "zoo" else {}
    size = 1
    for v in _positive_ints(kwargs):
        size *= v
        if size > budget:
            _too_large("source", kwargs)
    for name, spec in header["architecture"].items():
        with torch.device("meta"):
            module = build(spec, MODULE_TYPES)
        count = sum(t.numel() for t in (*module.parameters(), *module.buffers()))
        if count > budget:
            _too_large(name, spec.get("args", {}))


def _too_large(name: str, args: Any) -> None:
    raise FormatError(
        f"module {name!r} in the file declares sizes {str(args)[:80]} too large "
        "for this file (hostile architecture?)"
    )


def _shared_tensors(model: nn.Module) -> list[list[str]]:
    """Names of parameters (tied weights) and of buffers that are one tensor object, grouped."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        groups.setdefault(id(b), []).append(n)
    return [names for names in groups.values() if len(names) > 1]


def load(
    path: str | os.PathLike[str], *, model: Skeleton | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a .mzip file back into a model (eval mode) and its header."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f".mzip file not found: {path}")
    return from_bytes(path.read_bytes(), name=str(path), model=model)


class _NeedsRealInit(Exception):
    """The architecture cannot be built with parameters on the meta device."""


def _skeleton(model: Skeleton) -> nn.Module:
    if not isinstance(model, nn.Module) and callable(model):
        model = model()
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model= must be an nn.Module or a factory returning one, got {type(model).__name__}"
        )
    return model


def _fill(model: nn.Module, arch: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Apply the file's module specs to ``model`` and assign the decoded tensors."""
    apply_architecture(model, arch, MODULE_TYPES)
    return _assign(model, state)


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Install the decoded tensors as the model's own (strict: every key, every shape)."""
    shared = _shared_tensors(model)
    # Assigning installs the stored tensors as they are: give each the dtype the architecture
    # declares, as copying into the built tensors would.
    declared = {n: t.dtype for n, t in [*model.named_parameters(), *model.named_buffers()]}
    state = {
        k: v.to(declared[k]) if k in declared and v.dtype != declared[k] else v
        for k, v in state.items()
    }
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FormatError(f"stored tensors do not fit the architecture: {detail}") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in shared:  # assigning split what the constructor shared: share it again
        keep = params[names[0]] if names[0] in params else model.get_buffer(names[0])
        for other in names[1:]:
            owner, _, attr = other.rpartition(".")
            setattr(model.get_submodule(owner), attr, keep)
    return model


def _meta_left(model: nn.Module) -> list[str]:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    left += [
        f"{m}.{a}"
        for m, mod in model.named_modules()
        for a, v in vars(mod).items()
        if isinstance(v, torch.Tensor) and v.is_meta
    ]
    return left


def _assemble(
    source: ModelSource, arch: dict[str, Any], state: dict[str, torch.Tensor], *, empty: bool
) -> nn.Module:
    """Build a zoo / Hugging Face architecture and fill it. ``empty`` skips parameter
    initialisation (parameters on meta); a constructor that needs real values (an init meta
    tensors cannot run, a tensor computed from a parameter) raises ``_NeedsRealInit``."""
    try:
        model = source.build(empty=empty)
    except (ModelError, KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        if empty:
            raise _NeedsRealInit from None
        raise FormatError(f"cannot build the recorded model source: {exc}") from None
    _fill(model, arch, state)
    left = _meta_left(model)
    if left and empty:
        raise _NeedsRealInit
    if left:
        raise FormatError(f"the file holds no values for {left[:3]}")
    return model


def _check_hf_size(source: ModelSource, budget: int) -> None:
    if source.kind == "hf":
        from modelzip.zoo.hf import encoder_from_config

        encoder_from_config(source.kwargs["config"], max_elements=budget)


def from_bytes(
    data: bytes, *, name: str = "<bytes>", model: Skeleton | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from .mzip bytes. ``model`` is the caller's architecture (a skeleton
    module, filled in place, or a factory); it is required for files made from user models."""
    header, parts = fmt.read_header(data)
    budget = max(MIN_BUDGET, EXPANSION * len(data))
    try:
        source = ModelSource.from_json(header["source"])
        recorded_input = read_input_record(header["info"].get("input"))
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    if model is None and not source.buildable:  # the file alone cannot say how to build it
        raise FormatError(
            f"{name} was made from a user model ({source.ref[:80]}); pass its architecture: "
            "mz.load(path, model=MyNet()) in Python, --model FILE.py:FACTORY on the command line"
        )
    check_build_size(header, budget)
    try:
        if model is None:
            _check_hf_size(source, budget)
        state = decode_state(header, parts, file_bytes=len(data))
        if model is not None:
            skeleton = _skeleton(model)
            if not source.buildable:  # re-saving diffs against the caller's architecture
                mark_base(skeleton)
            apply_architecture(skeleton, header["architecture"], MODULE_TYPES)
            try:
                built = _assign(skeleton, state)
            except FormatError as exc:
                raise ModelError(f"{name}: the model passed does not fit the file: {exc}") from None
            left = _meta_left(built)
            if left:
                raise ModelError(f"{name}: the file holds no values for {left[:3]}")
            source = source_of(skeleton) or source
        else:
            try:
                built = _assemble(source, header["architecture"], state, empty=True)
            except _NeedsRealInit:
                built = _assemble(source, header["architecture"], state, empty=False)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    setattr(built, ATTR, source)  # model.modelzip_source
    if recorded_input is not None:  # the input it was compressed on: export needs no data
        setattr(built, INPUT_ATTR, recorded_input)
    return built.eval(), header
