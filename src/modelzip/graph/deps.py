"""Which layers must change together when output channels are removed (torch.fx analysis).

Every tensor in the traced graph that carries channels produced by a Conv/Linear lives in a
*channel space*. Channel-preserving ops (activations, pooling, dropout, BatchNorm) pass the
space on; ``flatten`` passes it on with a repeat factor (each channel becomes H*W features);
an elementwise add/sub/mul of two spaces merges them (residual connections: the producers on
both sides must keep the same channels). A space is prunable when everything that touches it
is understood: its producers' outputs (dim 0 of their weights), its BatchNorms, and the input
dimension of its consumers. Anything else (concatenation, the model's output, an unknown op,
a grouped conv, a module called twice) blocks the space, with a reason naming the op.

Example:
    >>> groups = channel_groups(model, example_input)             # doctest: +SKIP
    >>> groups["conv1"].consumers                                 # doctest: +SKIP
    [('conv2', 1)]
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from modelzip.errors import UnsupportedError

#: Modules whose output has the same channels, in the same place, as their input.
PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
PRESERVING_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    F.hardswish,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.interpolate,
    F.hardtanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
}
PRESERVING_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach"}
ELEMENTWISE = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
}
#: Reductions: fine while they reduce only the spatial dims (global average pooling).
REDUCTIONS = {torch.mean, torch.sum, torch.amax}
REDUCTION_METHODS = {"mean", "sum", "amax"}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "add_", "mul_"}
RESHAPES = {torch.flatten}
RESHAPE_METHODS = {"flatten", "view", "reshape"}
#: Ops that only read metadata: they neither pass channels on nor constrain them.
HARMLESS_METHODS = {"size", "dim"}
#: Layers whose output channels can be removed.
PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Group:
    """Layers that change together when channels of one space are removed.

    Attributes:
        producers: layers whose outputs (dim 0 of the weight) are the channels.
        norms: BatchNorm layers normalizing these channels.
        consumers: ``(layer, repeat)`` reading the channels on their input dimension;
            ``repeat`` > 1 after a flatten (each channel became ``repeat`` features).
        channels: how many channels the space has.
        blocked: reasons the space cannot be pruned (empty when it can).
    """

    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    channels: int = 0
    blocked: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.blocked and bool(self.producers)


@dataclass(frozen=True)
class _Ref:
    """Where a space sits in one tensor: its id, channel dim and flatten repeat."""

    space: int
    dim: int
    repeat: int = 1


class _Tracer(fx.Tracer):
    # Layers we reason about stay leaves even when parametrized (prune masks, fake-quant).
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*PRODUCERS, *NORMS, *PRESERVING_MODULES, nn.Flatten)):
            return True
        return super().is_leaf_module(m, qualname)


class _Analysis:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.groups: dict[int, Group] = {}

    def new(self, channels: int, producer: str | None = None) -> int:
        sid = len(self.parent)
        self.parent[sid] = sid
        self.groups[sid] = Group(producers=[producer] if producer else [], channels=channels)
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def group(self, ref: _Ref) -> Group:
        return self.groups[self.find(ref.space)]

    def union(self, a: _Ref, b: _Ref) -> None:
        ra, rb = self.find(a.space), self.find(b.space)
        if ra == rb:
            return
        ga, gb = self.groups.pop(rb), self.groups[ra]
        self.parent[rb] = ra
        gb.producers += ga.producers
        gb.norms += ga.norms
        gb.consumers += ga.consumers
        gb.blocked += ga.blocked

    def block(self, ref: _Ref, reason: str) -> None:
        g = self.group(ref)
        if reason not in g.blocked:
            g.blocked.append(reason)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"{getattr(node.target, '__name__', str(node.target))}()"


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every tensor's shape on ``example``."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise UnsupportedError(
            f"structured pruning needs a model torch.fx can trace; tracing failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    gm = fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    model.train(was_training)
    return gm


def channel_groups(model: nn.Module, example: torch.Tensor) -> dict[str, Group]:
    """The dependency group of every Conv/Linear layer's output channels, by layer name."""
    gm = trace(model, example)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    an = _Analysis()
    refs: dict[fx.Node, _Ref] = {}
    owner: dict[str, int] = {}

    def inputs(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in refs]

    def block_all(node: fx.Node, why: str) -> None:
        for a in inputs(node):
            an.block(refs[a], why)

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            block_all(node, "its channels are the model's output")
            continue
        ins = inputs(node)
        first = refs.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        out_ref = _propagate(node, modules, calls, an, refs, ins, first, owner)
        if out_ref is not None:
            refs[node] = out_ref
    out: dict[str, Group] = {}
    for name, sid in owner.items():
        out[name] = an.groups[an.find(sid)]
    return out


def _propagate(
    node: fx.Node,
    modules: dict[str, nn.Module],
    calls: Counter,
    an: _Analysis,
    refs: dict[fx.Node, _Ref],
    ins: list[fx.Node],
    first: _Ref | None,
    owner: dict[str, int],
) -> _Ref | None:
    """Handle one node: record consumers/norms, and return the space of its output."""
    why = f"{_op_name(node)} uses them"
    shape_in = _shape(node.args[0]) if node.args else None
    if node.op == "call_module":
        name = str(node.target)
        m = modules[name]
        if isinstance(m, PRODUCERS):
            return _producer(node, name, m, calls, an, refs, ins, shape_in, owner)
        if isinstance(m, NORMS) and first is not None and first.dim == 1 and first.repeat == 1:
            if calls[name] > 1:
                an.block(first, f"{_op_name(node)} is called more than once")
            an.group(first).norms.append(name)
            return first
        if isinstance(m, PRESERVING_MODULES):
            return first
        if isinstance(m, nn.Flatten) and first is not None:
            return _flatten(node, an, first, shape_in, why)
        for a in ins:
            an.block(refs[a], why)
        return None
    if node.op == "call_function" and node.target in PRESERVING_FUNCTIONS:
        return first
    if node.op == "call_method" and node.target in PRESERVING_METHODS:
        return first
    if node.op == "call_method" and node.target in HARMLESS_METHODS:
        return None
    if node.op == "call_function" and node.target is getattr:
        return None  # x.shape and friends
    elementwise = (node.op == "call_function" and node.target in ELEMENTWISE) or (
        node.op == "call_method" and node.target in ELEMENTWISE_METHODS
    )
    if elementwise:
        return _elementwise(node, an, refs, ins, why)
    reshape = (node.op == "call_function" and node.target in RESHAPES) or (
        node.op == "call_method" and node.target in RESHAPE_METHODS
    )
    if reshape and first is not None:
        return _flatten(node, an, first, shape_in, why)
    reduction = (node.op == "call_function" and node.target in REDUCTIONS) or (
        node.op == "call_method" and node.target in REDUCTION_METHODS
    )
    if reduction and first is not None:
        shape_out = _shape(node)
        spatial_only = (
            first.dim == 1
            and first.repeat == 1
            and shape_in is not None
            and shape_out is not None
            and len(shape_out) >= 2
            and shape_out[:2] == shape_in[:2]
        )
        if spatial_only:
            return first
        an.block(first, f"{why} (a reduction over the channels)")
        return None
    if node.op == "call_function" and node.target in (torch.cat, torch.concat, torch.stack):
        why = f"{_op_name(node)} concatenates them (concatenation is not supported)"
    for a in ins:
        an.block(refs[a], why)
    return None


def _producer(
    node: fx.Node,
    name: str,
    m: nn.Module,
    calls: Counter,
    an: _Analysis,
    refs: dict[fx.Node, _Ref],
    ins: list[fx.Node],
    shape_in: tuple[int, ...] | None,
    owner: dict[str, int],
) -> _Ref:
    is_conv = isinstance(m, nn.Conv1d | nn.Conv2d)
    grouped = is_conv and m.groups != 1
    if ins:
        ref = refs[ins[0]]
        if calls[name] > 1:
            an.block(ref, f"{_op_name(node)} is called more than once")
        elif grouped:
            an.block(ref, f"{_op_name(node)} is a grouped convolution (groups={m.groups})")
        elif is_conv and (ref.dim != 1 or ref.repeat != 1):
            an.block(ref, f"{_op_name(node)} does not read them as input channels")
        elif not is_conv and shape_in is not None and ref.dim != len(shape_in) - 1:
            an.block(ref, f"{_op_name(node)} does not read them as input features")
        else:
            an.group(ref).consumers.append((name, ref.repeat))
    channels = cast(int, m.out_channels if is_conv else m.out_features)
    sid = an.new(channels, name)
    owner[name] = sid
    out = _Ref(sid, 1 if is_conv else max(len(_shape(node) or (0, 0)) - 1, 1))
    if calls[name] > 1:
        an.block(out, f"{_op_name(node)} is called more than once")
    if grouped:
        an.block(out, f"{_op_name(node)} is a grouped convolution (groups={m.groups})")
    return out


def _flatten(
    node: fx.Node, an: _Analysis, ref: _Ref, shape_in: tuple[int, ...] | None, why: str
) -> _Ref | None:
    shape_out = _shape(node)
    if shape_in is None or shape_out is None:
        an.block(ref, why)
        return None
    if shape_out == shape_in:
        return ref
    # (N, C, *S) -> (N, C * prod(S)), channels on dim 1: each becomes prod(S) features.
    flat = len(shape_out) == 2 and shape_out == (shape_in[0], math.prod(shape_in[1:]))
    if ref.dim == 1 and flat:
        return _Ref(ref.space, 1, ref.repeat * math.prod(shape_in[2:]))
    an.block(ref, f"{why} (a reshape that moves the channels)")
    return None


def _elementwise(
    node: fx.Node, an: _Analysis, refs: dict[fx.Node, _Ref], ins: list[fx.Node], why: str
) -> _Ref | None:
    tensor_args = [a for a in node.all_input_nodes if _shape(a) is not None and _shape(a) != ()]
    spaced = [refs[a] for a in ins]
    if not spaced:
        return None
    out_shape = _shape(node) or ()
    for a in tensor_args:
        if a not in refs and _spans_channels(_shape(a) or (), out_shape, spaced[0].dim):
            # A tensor with its own per-channel values (the model input, a parameter read
            # with get_attr) and no prunable source pins the channels.
            for r in spaced:
                an.block(
                    r,
                    f"{_op_name(node)} combines them with {a.name!r}, which has no prunable source",
                )
            return None
    base = spaced[0]
    for r in spaced[1:]:
        if (r.dim, r.repeat) != (base.dim, base.repeat):
            an.block(base, why)
            an.block(r, why)
            return None
        an.union(base, r)  # a residual connection: both sides keep the same channels
    return base


def _spans_channels(shape: tuple[int, ...], out_shape: tuple[int, ...], dim: int) -> bool:
    """Whether a tensor of ``shape``, broadcast against ``out_shape``, varies along ``dim``."""
    idx = dim - (len(out_shape) - len(shape))  # broadcasting aligns shapes on the right
    return 0 <= idx < len(shape) and shape[idx] != 1
