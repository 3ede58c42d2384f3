"""Calibration statistics for ``gptq``: the layers' inputs as 2-D matrices, their Hessians.

A forward hook turns each layer's input into the (samples x inputs) matrix its weight's 2-D
view multiplies: tokens x features for ``Linear``, im2col patches for ``Conv1d``/``Conv2d``.
``call_order`` runs the model once to learn the order layers run in (and cheap per-input
statistics for the sensitivity estimate); ``capture`` then accumulates full Hessians for the
next run of consecutive layers that read the *same* input tensor (query/key/value), stopping
the forward pass right after them, so each layer is quantized from the outputs of the
already-quantized layers before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Stats:
    """Running sums over a layer's input rows (float64)."""

    rows: int = 0
    sq: torch.Tensor | None = None  # sum of x^2 per input
    absum: torch.Tensor | None = None  # sum of |x| per input
    xtx: torch.Tensor | None = None  # sum of x^T x (only when full)
    full: bool = False

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.rows += x.shape[0]
        sq, ab = x.pow(2).sum(0), x.abs().sum(0)
        self.sq = sq if self.sq is None else self.sq + sq
        self.absum = ab if self.absum is None else self.absum + ab
        if self.full:
            xtx = x.T @ x
            self.xtx = xtx if self.xtx is None else self.xtx + xtx

    def hessian(self) -> torch.Tensor:
        """``2 X^T X / n`` (the GPTQ Hessian, up to the constant)."""
        assert self.xtx is not None and self.rows
        return 2.0 * self.xtx / self.rows

    def diag(self) -> torch.Tensor:
        assert self.sq is not None and self.rows
        return 2.0 * self.sq / self.rows

    def act_mean(self) -> torch.Tensor:
        assert self.absum is not None and self.rows
        return (self.absum / self.rows).float()


def why_no_hessian(layer: nn.Module) -> str | None:
    """Why a layer's input cannot be turned into a matrix for its weight (None: it can)."""
    if isinstance(layer, nn.Linear):
        return None
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups})"
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return "padding other than explicit zeros"
        return None
    return f"{type(layer).__name__} has no input Hessian"


def input_matrix(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (samples x inputs) matrix ``layer``'s 2-D weight view multiplies."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    conv = cast(nn.Conv2d, layer)  # Conv1d and Conv2d: explicit int tuples (why_no_hessian)
    k, s = tuple(conv.kernel_size), tuple(conv.stride)
    p, d = tuple(cast(tuple[int, ...], conv.padding)), tuple(conv.dilation)
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        k, s, p, d = (1, *k), (1, *s), (0, *p), (1, *d)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass early."""


@dataclass
class _Tokens:
    """The real-token mask (batch x positions) of the batch now running, if the model has one."""

    mask: torch.Tensor | None = None

    def rows(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s input matrix, without the rows of padding positions: a sequence model's
        padding tokens are masked out of attention and pooling, so their activations must not
        weigh in the Hessian (with short sentences they are a third of the rows or more)."""
        m = self.mask
        linear = isinstance(layer, nn.Linear) and x.dim() == 3
        if m is not None and linear and tuple(x.shape[:2]) == tuple(m.shape):
            return x[m]
        return input_matrix(layer, x)


def token_mask(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The model's own real-token mask for input ``x`` (a ``token_mask`` method, as the
    sentence encoders have), or None."""
    fn = getattr(model, "token_mask", None)
    if not callable(fn):
        return None
    m = fn(x)
    return m.bool() if isinstance(m, torch.Tensor) and m.dim() == 2 else None


def _run(model: nn.Module, batches: list[torch.Tensor], tokens: _Tokens | None = None) -> None:
    with torch.no_grad():
        for x in batches:
            if tokens is not None:
                tokens.mask = token_mask(model, x)
            with contextlib.suppress(_Stop):
                model(x)


def _hooked(
    layers: dict[str, nn.Module], fn: Callable[[str, nn.Module, torch.Tensor], None]
) -> list[Any]:
    return [
        m.register_forward_hook(lambda mod, a, y, n=n: fn(n, mod, a[0])) for n, m in layers.items()
    ]


def call_order(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[torch.Tensor]
) -> tuple[list[str], dict[str, Stats]]:
    """Names of the layers that ran, in the order they first ran, and per-input statistics
    (diagonal only) of those that take a Hessian."""
    order: list[str] = []
    stats: dict[str, Stats] = {}
    tokens = _Tokens()

    def hook(name: str, mod: nn.Module, x: torch.Tensor) -> None:
        if name not in stats:
            order.append(name)
            stats[name] = Stats()
        if why_no_hessian(mod) is None:
            stats[name].add(tokens.rows(mod, x))

    handles = _hooked(layers, hook)
    try:
        _run(model.eval(), batches, tokens)
    finally:
        for h in handles:
            h.remove()
    return order, stats


@dataclass
class _Round:
    group: list[str] = field(default_factory=list)
    key: tuple[int, tuple[int, ...]] | None = None
    closed: bool = False


def block_of(model: nn.Module, name: str) -> str | None:
    """The outermost repeated block (an element of an ``nn.ModuleList``, as a transformer's
    layers are) that contains the layer ``name``; None when the layer is in none."""
    parts = name.split(".")
    mods = dict(model.named_modules())
    for i in range(1, len(parts)):
        parent = mods.get(".".join(parts[: i - 1])) if i > 1 else model
        if isinstance(parent, nn.ModuleList):
            return ".".join(parts[:i])
    return None


@dataclass
class BlockInputs:
    """The inputs (args, kwargs, token mask) one repeated block received on each calibration
    batch, from the model as quantized when they were captured. Later rounds inside the same
    block run the block alone on them instead of the whole model from its first layer."""

    name: str | None = None
    calls: list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor | None]] = field(
        default_factory=list
    )


def _block_inputs(model: nn.Module, block: str, batches: list[torch.Tensor]) -> BlockInputs:
    mod = dict(model.named_modules())[block]
    out = BlockInputs(block)
    mask: list[torch.Tensor | None] = [None]

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        out.calls.append((args, dict(kwargs), mask[0]))
        raise _Stop

    handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for x in batches:
                mask[0] = token_mask(model, x)
                with contextlib.suppress(_Stop):
                    model(x)
    finally:
        handle.remove()
    if len(out.calls) != len(batches):  # the block ran more or less than once a batch
        return BlockInputs()
    return out


def capture(
    model: nn.Module,
    layers: dict[str, nn.Module],
    pending: list[str],
    batches: list[torch.Tensor],
    cache: BlockInputs | None = None,
) -> dict[str, Stats]:
    """Full statistics for ``pending[0]`` and the layers right after it that read the same
    input tensor; the forward pass stops at the first pending layer outside that run.

    With a ``cache``, a layer inside a repeated block is reached by running that block alone
    on its captured inputs (captured once per block, when the first of its layers comes up:
    the layers before it are quantized by then), not the whole model from the start."""
    first = pending[0]
    rnd = _Round()
    stats: dict[str, Stats] = {}
    tokens = _Tokens()
    todo = {n: layers[n] for n in pending if why_no_hessian(layers[n]) is None}
    block = block_of(model, first) if cache is not None else None
    if cache is not None and block is not None and cache.name != block:
        found = _block_inputs(model, block, batches)
        cache.name, cache.calls = block, found.calls
    use_block = cache is not None and block is not None and bool(cache.calls)

    def hook(name: str, mod: nn.Module, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape))
        if name == first:
            rnd.key = key
            if first not in rnd.group:
                rnd.group.append(first)
        elif rnd.key is None:
            return  # runs before the first pending layer (already quantized or not a target)
        elif not rnd.closed and key == rnd.key and name not in rnd.group:
            rnd.group.append(name)
        elif name not in rnd.group:
            rnd.closed = True
            raise _Stop
        if name in rnd.group:
            stats.setdefault(name, Stats(full=True)).add(tokens.rows(mod, x))

    handles = _hooked(todo, hook)
    try:
        if use_block:
            assert cache is not None and block is not None
            mod = dict(model.named_modules())[block]
            with torch.no_grad():
                for args, kwargs, mask in cache.calls:
                    tokens.mask = mask
                    with contextlib.suppress(_Stop):
                        mod(*args, **kwargs)
        else:
            _run(model.eval(), batches, tokens)
    finally:
        for h in handles:
            h.remove()
    return stats
