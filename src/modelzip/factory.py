"""Calling the user's own model code: ``FILE.py:FACTORY``, named by the user at the command
line or in the Python call, never by a file modelzip reads (``.mzip`` loading has no path
here; a test checks that ``codec/`` and the loader never import this module).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from modelzip.errors import ModelError


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` is written ``FILE.py:FACTORY``."""
    path, sep, fn = spec.rpartition(":")
    return bool(sep and fn and path.endswith(".py"))


def factory_label(spec: str) -> str:
    """``FILE.py:FACTORY`` without the folder: how a file records where its model came from
    (information for people, never an instruction)."""
    path, _, fn = spec.rpartition(":")
    return f"{Path(path).name}:{fn}"


def call_factory(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import the user's ``FILE.py`` and call ``FACTORY(**kwargs)`` (keyword arguments it does
    not accept are left out).

    Example:
        >>> call_factory("my_net.py:build")  # doctest: +SKIP
    """
    path_text, _, fn_name = spec.rpartition(":")
    path = Path(path_text)
    if not is_factory_spec(spec):
        raise ModelError(f"model factory must be written FILE.py:FACTORY, got {spec!r}")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    mod_name = f"modelzip_user_{abs(hash(str(path.resolve())))}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        sys.modules[mod_name] = module
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ModelError(f"{path} has no factory {fn_name!r}; callables: {', '.join(names)}")
    accepted = inspect.signature(fn).parameters
    try:
        model = fn(**{k: v for k, v in (kwargs or {}).items() if k in accepted})
    except Exception as exc:
        raise ModelError(f"{spec}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
