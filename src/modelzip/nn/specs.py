"""JSON specs of modules, so a compressed architecture (smaller layers after surgery,
replacement modules) is rebuilt on load without pickle.

Standard torch layers are described by their constructor arguments. modelzip's own modules
subclass ``Buildable``: ``to_spec()`` returns their constructor kwargs. Which types a file
may name is a closed table the caller passes in (``modelzip.nn.registry.MODULE_TYPES``):
nothing registers itself by being imported or subclassed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from modelzip.errors import FormatError, choices_text
from modelzip.nn.constraints import base_class
from modelzip.nn.fastpath import keep_transformer_slow_paths


class Buildable(nn.Module):
    """Mixin for modelzip modules: rebuildable from ``to_spec()`` kwargs."""

    def to_spec(self) -> dict[str, Any]:
        raise NotImplementedError


def _conv(m: nn.Conv1d | nn.Conv2d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn(m: nn.BatchNorm1d | nn.BatchNorm2d) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


#: torch layers whose shapes compression may change, and how to describe them.
_TORCH: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    nn.Linear: lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    },
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _bn,
    nn.BatchNorm2d: _bn,
    nn.GroupNorm: lambda m: {
        "num_groups": m.num_groups,
        "num_channels": m.num_channels,
        "eps": m.eps,
        "affine": m.affine,
    },
    nn.LayerNorm: lambda m: {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": getattr(m, "bias", None) is not None,
    },
    nn.Embedding: lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
    },
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.Identity: lambda m: {},
}
#: The torch layer types a file may name, by class name.
TORCH_TYPES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in _TORCH}


def spec_of(module: nn.Module) -> dict[str, Any] | None:
    """``{"type": name, "args": {...}}`` for a describable module, else None."""
    cls = base_class(module)
    if isinstance(module, Buildable):
        return {"type": cls.__name__, "args": module.to_spec()}
    if cls in _TORCH:
        return {"type": cls.__name__, "args": _TORCH[cls](module)}
    return None


def build(spec: Any, types: Mapping[str, type[nn.Module]]) -> nn.Module:
    """Instantiate a module from its spec (fresh parameters; the state is loaded after).
    ``types`` is the closed allow-list of class names a file may name."""
    if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict):
        raise FormatError(f"bad module spec {str(spec)[:80]}")
    name = spec.get("type")
    if not isinstance(name, str):
        raise FormatError(f"bad module spec: type must be a class name, got {str(name)[:80]}")
    cls = types.get(name)
    if cls is None:
        raise FormatError(
            f"unknown module type {name[:80]!r} in file; known: {choices_text(list(types))}"
        )
    args = dict(spec["args"])
    for k in ("kernel_size", "stride", "dilation", "normalized_shape"):
        if isinstance(args.get(k), list):
            args[k] = tuple(args[k])
    if isinstance(args.get("padding"), list):
        args["padding"] = tuple(args["padding"])
    try:
        return cls(**args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FormatError(f"cannot build {name} from {args}: {exc}") from None


def architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Spec of every describable module, by name.

    Children of Buildable modules are recorded too: their parent builds them as plain layers,
    but a later stage may have replaced one (a low-rank factor converted to an integer-kernel
    layer), and ``apply_architecture`` then replaces it again after building the parent.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not name or ".parametrizations" in name:
            continue
        spec = spec_of(module)
        if spec is not None:
            out[name] = spec
    return out


def apply_architecture(
    model: nn.Module, arch: dict[str, Any], types: Mapping[str, type[nn.Module]]
) -> nn.Module:
    """Replace the modules of ``model`` whose spec differs from ``arch`` (parents first)."""
    if not isinstance(arch, dict):
        raise FormatError("bad architecture record: expected an object of module specs")
    for name in sorted(arch, key=lambda n: n.count(".")):
        spec = arch[name]
        try:
            current = model.get_submodule(name)
        except AttributeError:
            current = None
        if current is not None and spec_of(current) == spec:
            continue
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            raise FormatError(
                f"module {name!r} in file has no parent in the model (is it the model the "
                "file was made from?)"
            ) from None
        setattr(parent, child, build(spec, types))
    keep_transformer_slow_paths(model)  # as after the replacements that made the file
    return model
