"""Where a model comes from, recorded so a .mzip can rebuild it without pickle.

A source is a zoo name or an importable factory (``FILE.py:FACTORY``) plus keyword
arguments, all JSON. It is attached to the model as ``model.modelzip_source``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modelzip.errors import ModelError
from modelzip.zoo.models import zoo_model

ATTR = "modelzip_source"
#: Zoo models that come with pretrained weights (sentence encoders for ``sentences``).
PRETRAINED_ZOO = ("minilm",)


@dataclass(frozen=True)
class ModelSource:
    """How to build the uncompressed architecture: ``kind`` is ``zoo``, ``factory`` or
    ``hf`` (a local Hugging Face / sentence-transformers folder)."""

    kind: str
    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> ModelSource:
        if not isinstance(obj, dict) or obj.get("kind") not in ("zoo", "factory", "hf"):
            raise ModelError(f"bad model source record: {obj!r}")
        kwargs = obj.get("kwargs") or {}
        if not isinstance(kwargs, dict) or not isinstance(obj.get("ref"), str):
            raise ModelError(f"bad model source record: {obj!r}")
        return cls(obj["kind"], obj["ref"], kwargs)

    @property
    def pretrained(self) -> bool:
        """Whether the source carries trained weights (no baseline training needed)."""
        return self.kind == "hf" or (self.kind == "zoo" and self.ref in PRETRAINED_ZOO)

    def build(self, *, pretrained: bool = False, empty: bool = False) -> nn.Module:
        """Instantiate the architecture and tag it with this source.

        Weights are fresh unless ``pretrained`` and the source carries trained weights. With
        ``empty``, parameters live on the meta device (no memory, no random initialisation,
        which costs more than decoding a whole .mzip for a transformer); the caller must then
        assign every one (``load_state_dict(..., assign=True)``). Buffers stay real, so
        derived buffers that no state_dict holds (position ids) keep their values.
        """
        if empty:
            with parameters_on_meta():
                return self.build(pretrained=pretrained)
        if self.kind == "hf" or (self.kind == "zoo" and self.ref in PRETRAINED_ZOO):
            from modelzip.zoo.hf import build_encoder
            from modelzip.zoo.text import minilm_dir

            folder = minilm_dir() if self.kind == "zoo" else self.ref
            model: nn.Module = build_encoder(folder, pretrained=pretrained)
        elif self.kind == "zoo":
            kw = dict(self.kwargs)
            # Remaining kwargs are the zoo model's width options (e.g. a distillation student).
            model = zoo_model(self.ref, tuple(kw.pop("in_shape")), kw.pop("num_classes"), **kw)
        else:
            model = _call_factory(self.ref, self.kwargs)
        setattr(model, ATTR, self)
        return model


_REGISTER_PARAMETER = nn.Module.register_parameter
_meta_builds = threading.local()  # per thread: {id(original): (original, meta twin)} or None
_patch_lock = threading.Lock()
_patch_users = 0


def _register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    """``nn.Module.register_parameter`` that, in a thread inside ``parameters_on_meta``, swaps
    the new parameter for a meta twin (one twin per parameter object, so ties survive)."""
    _REGISTER_PARAMETER(module, name, param)
    twins = getattr(_meta_builds, "twins", None)
    if twins is None or param is None or param.device.type == "meta":
        return
    if id(param) not in twins:
        twin = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        twins[id(param)] = (param, twin)  # the original stays referenced: its id is not reused
    module._parameters[name] = twins[id(param)][1]


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Parameters registered by this thread inside the block move to the meta device as they
    are created, so constructors' initialisers run on meta tensors, for free. Other threads
    are unaffected; blocks may nest and overlap across threads."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign,assignment]
        _patch_users += 1
    outer = getattr(_meta_builds, "twins", None)
    _meta_builds.twins = outer if outer is not None else {}
    try:
        yield
    finally:
        _meta_builds.twins = outer
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0 and nn.Module.register_parameter is _register_parameter:
                nn.Module.register_parameter = _REGISTER_PARAMETER  # type: ignore[method-assign]


def source_of(model: nn.Module) -> ModelSource | None:
    """The source a model was built from, if modelzip built it."""
    return getattr(model, ATTR, None)


def _call_factory(ref: str, kwargs: dict[str, Any]) -> nn.Module:
    path_text, _, fn_name = ref.rpartition(":")
    path = Path(path_text)
    if not path_text or not fn_name or path.suffix != ".py":
        raise ModelError(f"model factory must be written FILE.py:FACTORY, got {ref!r}")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    mod_name = f"modelzip_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path}")
    module = sys.modules.get(mod_name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        sys.modules[mod_name] = module
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelError(f"{path} has no factory {fn_name!r}; callables: {', '.join(names)}")
    accepted = inspect.signature(fn).parameters
    try:
        model = fn(**{k: v for k, v in kwargs.items() if k in accepted})
    except Exception as exc:
        raise ModelError(f"{ref}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
