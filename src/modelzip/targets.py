"""The one rule for picking layers, and per-layer values keyed by layer patterns.

A pattern is an exact module name (``fc1``), a glob (``features.*``), a regex written
``re:<regex>``, or a class name (``Linear``). A pattern that matches nothing is an error that
lists the layer names, so typos never silently select nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from torch import nn

from modelzip.errors import ConfigError, choices_text
from modelzip.nn.constraints import base_class

T = TypeVar("T")

#: Layers that hold the weights the built-in methods compress.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv1d)


def matches(pattern: str, name: str, module: nn.Module) -> bool:
    """Whether ``pattern`` selects the module called ``name``."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    # A constrained module's class is parametrize's generated subclass: match its base name.
    if pattern == name or base_class(module).__name__ == pattern:
        return True
    return any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern)


def weight_layers(
    model: nn.Module, types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS
) -> dict[str, nn.Module]:
    """All layers of the given types, by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if name and isinstance(m, types)}


def select(
    model: nn.Module,
    patterns: Iterable[str] | None = None,
    *,
    types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS,
    exclude: Iterable[str] = (),
) -> dict[str, nn.Module]:
    """Layers of ``types`` that match any of ``patterns`` (all of them when None).

    Example:
        >>> select(model, ["fc*"])                          # doctest: +SKIP
        {'fc1': Linear(...), 'fc2': Linear(...)}
    """
    candidates = weight_layers(model, types)
    if not candidates:
        raise ConfigError(
            f"the model has no layers of type {', '.join(t.__name__ for t in types)} to compress"
        )
    chosen = dict(candidates)
    if patterns is not None:
        patterns = list(patterns)
        for p in patterns:
            check_pattern(p, candidates)
        chosen = {n: m for n, m in candidates.items() if any(matches(p, n, m) for p in patterns)}
    for p in exclude:
        check_pattern(p, candidates)
        chosen = {n: m for n, m in chosen.items() if not matches(p, n, m)}
    return chosen


def check_pattern(pattern: str, layers: Mapping[str, nn.Module]) -> None:
    """Raise a ConfigError naming the layers when ``pattern`` selects none of them."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    if not any(matches(pattern, n, m) for n, m in layers.items()):
        raise ConfigError(
            f"layer pattern {pattern!r} matches no layer; layers: {choices_text(layers)}"
        )


def per_layer(
    value: T | Mapping[str, T], layers: Mapping[str, nn.Module], field: str = "value"
) -> dict[str, T]:
    """Resolve a number or a ``{default: x, pattern: y}`` map into one value per layer.

    An exact name wins over a pattern; among patterns the last matching one wins (so more
    specific entries go later, as in a YAML file read top to bottom). Layers with no match
    and no ``default`` are left out (they are not compressed).
    """
    if not isinstance(value, Mapping):
        return dict.fromkeys(layers, value)
    rules = {k: v for k, v in value.items() if k != "default"}
    for p in rules:
        check_pattern(p, layers)
    out: dict[str, T] = {}
    for name, module in layers.items():
        if name in rules:
            out[name] = rules[name]
            continue
        hit = [v for p, v in rules.items() if matches(p, name, module)]
        if hit:
            out[name] = hit[-1]
        elif "default" in value:
            out[name] = value["default"]
    return out
