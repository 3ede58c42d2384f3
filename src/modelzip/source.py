"""Where a model's architecture comes from, recorded as data so a .mzip can name it safely.

A source is one of three kinds, all plain JSON in the file:

- ``zoo``: a built-in architecture by name plus its size arguments, built by modelzip's own
  closed table (``modelzip.zoo.models.ZOO`` and the bundled MiniLM);
- ``hf``: a Hugging Face encoder, recorded as its ``config.json`` values and built with
  ``transformers``' own classes for that ``model_type`` (``trust_remote_code`` is never set),
  with its tokenizer as the text of its ``tokenizer.json`` (``modelzip.zoo.tokens``; none when
  it is the bundled MiniLM one, which a file without one means) and its sentence-transformers
  pooling (``modelzip.zoo.hf.Pipeline``);
- ``user``: a model the user wrote. The file records a label (``my_net.py:build`` or the
  class name) for people to read; the architecture always comes from the caller at load time
  (``mz.load(path, model=...)``, ``--model FILE.py:FACTORY``).

Building a source never imports or calls anything a file names.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.errors import FormatError, ModelError
from modelzip.zoo.models import zoo_model

ATTR = "modelzip_source"
#: Attribute of a model loaded from a .mzip: the input it was compressed on (``InputRecord``).
INPUT_ATTR = "modelzip_input"
#: Input dtypes a .mzip may record (by name; nothing else is accepted on read). Token ids are
#: not recorded: an all-zero example of them is all padding, no input to trace a text model on.
INPUT_DTYPES = {"float32": torch.float32}
#: Zoo models that come with pretrained weights (sentence encoders for ``sentences``).
PRETRAINED_ZOO = ("minilm",)
KINDS = ("zoo", "hf", "user")


@dataclass(frozen=True)
class ModelSource:
    """How to build the uncompressed architecture (see the module docstring). ``folder`` is
    the local Hugging Face folder in this process (for pretrained weights); it is never
    written to a file."""

    kind: str
    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    folder: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "kwargs": self.kwargs}

    @classmethod
    def from_json(cls, obj: Any) -> ModelSource:
        """Validate a recorded source. Files of modelzip 0.1 recorded user models as
        ``factory`` with a path: read as a ``user`` label (the path is never used)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("ref"), str):
            raise FormatError(f"bad model source record: {str(obj)[:80]}")
        kind, ref, kwargs = obj.get("kind"), obj["ref"], obj.get("kwargs") or {}
        if kind == "factory":
            path, _, fn = ref.rpartition(":")
            return cls("user", f"{Path(path).name}:{fn}")
        if kind not in KINDS or not isinstance(kwargs, dict):
            raise FormatError(
                f"bad model source record: kind {str(kind)[:40]!r} (valid: {', '.join(KINDS)})"
            )
        if kind == "hf" and not isinstance(kwargs.get("config"), dict):
            raise FormatError("bad model source record: a Hugging Face source needs its config")
        return cls(kind, ref, kwargs if kind != "user" else {})

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> ModelSource:
        """The source of a local Hugging Face / sentence-transformers folder."""
        from modelzip.zoo import tokens
        from modelzip.zoo.hf import read_config, read_pipeline

        folder = Path(folder).resolve()
        config = read_config(folder)
        tok = tokens.from_folder(folder, int(config.get("pad_token_id") or 0))
        kwargs: dict[str, Any] = {"config": config, "pipeline": read_pipeline(folder).to_json()}
        if tok.key != tokens.minilm().key:  # the bundled one (BERT uncased) is not stored again
            kwargs["tokenizer"] = tok.spec
        return cls("hf", folder.name, kwargs, folder=str(folder))

    @property
    def pretrained(self) -> bool:
        """Whether the source carries trained weights here (no baseline training needed)."""
        return (self.kind == "hf" and self.folder is not None) or (
            self.kind == "zoo" and self.ref in PRETRAINED_ZOO
        )

    @property
    def buildable(self) -> bool:
        """Whether modelzip can build this architecture itself (zoo and Hugging Face)."""
        return self.kind != "user"

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
        if self.kind == "user":
            raise ModelError(
                f"the model was made from user code ({self.ref}); pass its architecture: "
                "mz.load(path, model=...) or --model FILE.py:FACTORY"
            )
        model: nn.Module
        if self.kind == "hf" or self.ref in PRETRAINED_ZOO:
            from modelzip.zoo import hf

            if self.kind == "zoo":
                from modelzip.zoo.text import minilm_dir

                model = hf.build_encoder(minilm_dir(), pretrained=pretrained)
            elif pretrained and self.folder is not None:
                model = hf.build_encoder(self.folder, pretrained=True)
            else:
                model = hf.encoder_from_config(
                    self.kwargs["config"],
                    tokenizer=self.kwargs.get("tokenizer"),
                    pipeline=self.kwargs.get("pipeline"),
                )
        else:
            kw = dict(self.kwargs)
            if not isinstance(kw.get("in_shape"), list) or not isinstance(
                kw.get("num_classes"), int
            ):
                raise ModelError(f"zoo:{self.ref}: the source needs in_shape and num_classes")
            # Remaining kwargs are the zoo model's width options (e.g. a distillation student).
            model = zoo_model(self.ref, tuple(kw.pop("in_shape")), kw.pop("num_classes"), **kw)
        setattr(model, ATTR, self)
        return model


def input_record(x: Any) -> dict[str, Any] | None:
    """How a .mzip records one float input tensor ``x``, batch dim left out (None for other
    inputs: token ids, a tuple of tensors)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        return None
    dtype = next((k for k, v in INPUT_DTYPES.items() if v == x.dtype), None)
    return {"shape": list(x.shape[1:]), "dtype": dtype} if dtype else None


def read_input_record(obj: Any) -> tuple[tuple[int, ...], torch.dtype] | None:
    """``(shape, dtype)`` from a file's input record; None when absent; FormatError when bad."""
    if obj is None:
        return None
    shape = obj.get("shape") if isinstance(obj, dict) else None
    dtype = INPUT_DTYPES.get(str(obj.get("dtype"))) if isinstance(obj, dict) else None
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**20 for d in shape)
        or dtype is None
    ):
        raise FormatError(f"bad input record {str(obj)[:80]}")
    return tuple(shape), dtype


def user_source(model: nn.Module, label: str | None = None) -> ModelSource:
    """The source of a model the user built (``label``: ``FILE.py:FACTORY`` if known)."""
    return ModelSource("user", label or type(model).__name__)


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
    """The source a model was built from, if modelzip recorded one."""
    return getattr(model, ATTR, None)
