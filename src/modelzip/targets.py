"""The one rule for picking layers, and per-layer values keyed by layer patterns.

A pattern is one of:

- an exact module name (``fc1``), a glob (``features.*``), a regex written ``re:<regex>``, or a
  class name (``Linear``): these name layers, so one that matches nothing is an error listing
  the layer names (typos never silently select nothing);
- a **role**, which fits any model: ``role:first`` / ``role:last`` (the first and the last
  weight layer the input passes through, found from a real forward pass on an example batch,
  so they are the network's input layer and its output head whatever they are called),
  ``role:inner`` (every other layer), ``role:depthwise`` (grouped convolutions with one
  input channel per group), ``role:recurrent`` (the matrices of an LSTM/GRU/RNN, which
  ``compress`` gives their own layers: ``modelzip.nn.rnn``);
- a **size rule** on a layer's parameter count (weight and bias): ``params<5000``,
  ``params<=5000``, ``params>100000``, ``params>=100000``.

Roles and size rules describe layers rather than name them, so they may match no layer of a
given model (a recipe with ``role:depthwise`` also fits LeNet); a selection that ends up empty is
still an error.

Example (YAML)::

    sparsity: {default: 0.8, "role:first": 0.5, "role:last": 0.5, "params<2000": 0.0}
    bits: {default: 4, "role:first": 8, "role:last": 8}
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from modelzip.errors import ConfigError, choices_text
from modelzip.nn.constraints import base_class

T = TypeVar("T")

#: Layers that hold the weights the built-in methods compress.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv1d)
ROLES = ("first", "last", "inner", "depthwise", "recurrent")
_SIZE = re.compile(r"^params\s*(<=|>=|<|>)\s*([0-9_]+)$")
_OPS: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Selection(dict[str, nn.Module]):
    """Selected layers by name, in model order, that also know the execution order the
    ``role:`` patterns use (computed on first use, from one forward pass on the example)."""

    def __init__(
        self,
        layers: Mapping[str, nn.Module],
        order_fn: Callable[[], list[str] | None] | None = None,
    ):
        super().__init__(layers)
        self._order_fn = order_fn
        self._order: list[str] | None = None

    @property
    def order(self) -> list[str] | None:
        """Layer names in the order a forward pass reaches them (None without an example)."""
        if self._order is None and self._order_fn is not None:
            self._order = self._order_fn()
        return self._order


Order = list[str] | Callable[[], list[str] | None] | None


def is_descriptive(pattern: str) -> bool:
    """Whether a pattern describes layers (role, size rule) rather than naming them."""
    return pattern.startswith("role:") or _SIZE.match(pattern.replace(" ", "")) is not None


def execution_order(
    model: nn.Module, example: Any, types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS
) -> list[str]:
    """Names of the layers of ``types`` in the order a forward pass on ``example`` calls them.

    The model runs in eval mode under ``no_grad`` (BatchNorm statistics do not move) and is
    put back in its previous mode. ``example`` is a tensor or a tuple of input tensors.
    """
    order: list[str] = []
    names = {id(m): n for n, m in model.named_modules() if n and isinstance(m, types)}
    seen: set[int] = set()

    def hook(module: nn.Module, _inp: Any, _out: Any) -> None:
        if id(module) in names and id(module) not in seen:
            seen.add(id(module))
            order.append(names[id(module)])

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in names]

    # a recurrent layer's matrices are read, never called: they run when their owner is called
    def owner_hook(module: nn.Module, _inp: Any) -> None:
        for child in module.children():
            hook(child, None, None)

    handles += [
        m.register_forward_pre_hook(owner_hook)
        for m in model.modules()
        if any(getattr(c, "read_by", None) and id(c) in names for c in m.children())
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example) if isinstance(example, tuple | list) else model(example)
    except RuntimeError as exc:
        raise ConfigError(
            f"role selectors need a forward pass, which failed: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def _layer_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matches(pattern: str, name: str, module: nn.Module, order: Order = None) -> bool:
    """Whether ``pattern`` selects the module called ``name``; roles need ``order`` (the
    execution order, or a function that computes it)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if pattern.startswith("role:"):
        role = pattern[5:]
        if role == "depthwise":
            groups = getattr(module, "groups", 1)
            return groups > 1 and groups == getattr(module, "in_channels", 0)
        if role == "recurrent":
            from modelzip.nn.rnn import PackedWeight

            return isinstance(module, PackedWeight)
        if role not in ROLES:
            raise ConfigError(f"unknown layer role {pattern!r}; valid roles: {', '.join(ROLES)}")
        if callable(order):
            order = order()
        if order is None:
            raise ConfigError(
                f"layer role {pattern!r} needs the model's execution order; this method "
                "selected layers without an example input"
            )
        if not order:
            return False
        if role == "first":
            return name == order[0]
        if role == "last":
            return name == order[-1]
        return name in order[1:-1]
    size = _SIZE.match(pattern.replace(" ", ""))
    if size is not None:
        return _OPS[size.group(1)](_layer_params(module), int(size.group(2)))
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
    example: Any = None,
) -> dict[str, nn.Module]:
    """Layers of ``types`` that match any of ``patterns`` (all of them when None), as a
    ``Selection`` (a dict that also knows the execution order).

    ``example`` (a real input batch, or a function returning one) gives the execution order
    that ``role:`` patterns use, here and in ``per_layer`` on the returned selection; the
    forward pass runs only when a role pattern needs it.

    Example:
        >>> select(model, ["fc*"])                          # doctest: +SKIP
        {'fc1': Linear(...), 'fc2': Linear(...)}
        >>> select(model, ["role:last"], example=x)         # doctest: +SKIP
        {'fc3': Linear(...)}
    """
    candidates = weight_layers(model, types)
    if not candidates:
        raise ConfigError(
            f"the model has no layers of type {', '.join(t.__name__ for t in types)} to compress"
        )

    def run_forward() -> list[str]:
        return execution_order(model, example() if callable(example) else example, types)

    lazy = Selection({}, run_forward if example is not None else None)

    def order() -> list[str] | None:
        return lazy.order

    chosen = dict(candidates)
    if patterns is not None:
        patterns = list(patterns)
        for p in patterns:
            check_pattern(p, candidates, order)
        chosen = {
            n: m for n, m in candidates.items() if any(matches(p, n, m, order) for p in patterns)
        }
    for p in exclude:
        check_pattern(p, candidates, order)
        chosen = {n: m for n, m in chosen.items() if not matches(p, n, m, order)}
    if not chosen:
        raise ConfigError(
            f"layer patterns {list(patterns or [])} minus {list(exclude)} select no layer; "
            f"layers: {choices_text(candidates)}"
        )
    return Selection(chosen, order)


def check_pattern(pattern: str, layers: Mapping[str, nn.Module], order: Order = None) -> None:
    """Raise a ConfigError naming the layers when a naming ``pattern`` selects none of them
    (roles and size rules may select none; a malformed one is still an error)."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"layer pattern {pattern!r} is not a valid regex: {exc}") from None
    if pattern.startswith("params") and not is_descriptive(pattern):
        raise ConfigError(
            f"size rule {pattern!r} is malformed; write params<N, params<=N, params>N or "
            "params>=N with N an integer"
        )
    hit = any(matches(pattern, n, m, order) for n, m in layers.items())
    if not hit and not is_descriptive(pattern):
        raise ConfigError(
            f"layer pattern {pattern!r} matches no layer; layers: {choices_text(layers)}"
        )


def per_layer(
    value: T | Mapping[str, T], layers: Mapping[str, nn.Module], field: str = "value"
) -> dict[str, T]:
    """Resolve a number or a ``{default: x, pattern: y}`` map into one value per layer.

    An exact name wins over a pattern; among patterns the last matching one wins (so more
    specific entries go later, as in a YAML file read top to bottom). Layers with no match
    and no ``default`` are left out (they are not compressed). ``role:`` patterns use the
    execution order of a ``Selection`` from ``select(..., example=...)``.
    """
    if not isinstance(value, Mapping):
        return dict.fromkeys(layers, value)
    order: Order = (lambda: layers.order) if isinstance(layers, Selection) else None
    rules = {k: v for k, v in value.items() if k != "default"}
    for p in rules:
        check_pattern(p, layers, order)
    out: dict[str, T] = {}
    for name, module in layers.items():
        if name in rules:
            out[name] = rules[name]
            continue
        hit = [v for p, v in rules.items() if matches(p, name, module, order)]
        if hit:
            out[name] = hit[-1]
        elif "default" in value:
            out[name] = value["default"]
    return out
