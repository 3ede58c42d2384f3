"""Name -> method registry. Methods register themselves at import; the pipeline only looks up.

Example:
    >>> from modelzip.registry import register, get_method
    >>> @register(FinetuneConfig)                      # doctest: +SKIP
    ... def finetune(model, cfg, ctx): ...
    >>> get_method("finetune").config                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from modelzip.config import MethodConfig
from modelzip.errors import RecipeError, choices_text, did_you_mean

if TYPE_CHECKING:
    from modelzip.context import Context

ApplyFn = Callable[[nn.Module, Any, "Context"], nn.Module]


@dataclass(frozen=True)
class Method:
    """A registered compression method: its config class and its transform."""

    name: str
    config: type[MethodConfig]
    apply: ApplyFn
    summary: str


_METHODS: dict[str, Method] = {}


def register(config: type[MethodConfig]) -> Callable[[ApplyFn], ApplyFn]:
    """Register ``apply(model, cfg, ctx) -> model`` under ``config.method``."""

    def deco(fn: ApplyFn) -> ApplyFn:
        name = config.method
        if not name:
            raise ValueError(f"{config.__name__} must set the class variable 'method'")
        if name in _METHODS and _METHODS[name].apply is not fn:
            raise ValueError(f"method {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = Method(name, config, fn, doc[0] if doc else "")
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every built-in method (one module per family).
    import modelzip.methods  # noqa: F401


def get_method(name: str) -> Method:
    """Look up a method by recipe name; unknown names get a 'did you mean' error."""
    _ensure_loaded()
    if name not in _METHODS:
        raise RecipeError(
            f"unknown method {name!r}{did_you_mean(name, _METHODS)}; "
            f"valid methods: {choices_text(_METHODS)}"
        )
    return _METHODS[name]


def methods() -> dict[str, Method]:
    """All registered methods by name."""
    _ensure_loaded()
    return dict(_METHODS)
