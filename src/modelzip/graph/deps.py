"""Which layers must change together when output channels are removed.

The analysis runs on what the model really computes on an example batch
(``modelzip.graph.trace``): Python control flow in ``forward`` takes the example's branch.
Every tensor that carries channels produced by a Conv/Linear has a *layout* along one of
its dims: a list of pieces ``(space, lo, hi)`` (channels ``lo..hi`` of a channel space, in
order) and a ratio of positions per channel (``flatten`` makes each channel ``H*W``
features; splitting a feature dim into heads makes one position ``D`` channels).

- Channel-preserving ops (activations, pooling, dropout) pass the layout on; BatchNorm
  records itself as a member; GroupNorm too, over one whole space, which then loses
  channels in whole groups (its statistics per group stay those of the kept groups);
  reshapes, transposes and reductions over other dims move it.
- ``torch.cat`` on the channel dim concatenates layouts (the consumer after it reads each
  branch's channels at their offsets); ``chunk`` splits one (the sections keep equal size).
- An elementwise add/mul of two layouts merges their spaces (residual connections).
- A depthwise conv's output channels follow its input channels; a grouped conv reads and
  writes its channels in equal blocks (sections: the same count removed from each).
- ``view`` to ``(..., heads, head_dim)``, attention (matmul or
  ``scaled_dot_product_attention``) and the merge back make the query, key and value
  projections one space removed in whole heads.

A space is prunable when everything that touches it is understood; anything else (the
model's output, LayerNorm over the channels, an unknown op, a module called twice) blocks
it, with a reason naming the layer or op.

Example:
    >>> groups = channel_groups(model, example_input)             # doctest: +SKIP
    >>> groups["conv1"].consumers                                 # doctest: +SKIP
    [('conv2', 1)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

import torch
from torch import nn

from modelzip.graph import ops as opsets
from modelzip.graph.trace import Graph, Node, record

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
GROUP_NORMS = (nn.GroupNorm,)


@dataclass(frozen=True)
class Member:
    """Where one layer holds a space's channels ``lo..hi``: on its output (``role`` "out":
    weight rows, bias, BatchNorm vectors) or its input (``"in"``: weight dim 1), starting at
    position ``offset`` of that dim, each channel ``repeat`` consecutive positions wide."""

    layer: str
    role: str
    offset: int
    lo: int
    hi: int
    repeat: int = 1


@dataclass
class Group:
    """Layers that change together when channels of one space are removed.

    Attributes:
        producers: layers whose outputs (dim 0 of the weight) are the channels.
        norms: BatchNorm and GroupNorm layers normalizing these channels.
        consumers: ``(layer, repeat)`` reading the channels on their input dimension.
        followers: depthwise convolutions whose channels follow these.
        members: every place the channels sit (what surgery slices).
        channels: how many channels the space has.
        block: channels are removed in whole blocks of this size (attention heads,
            GroupNorm groups).
        sections: ``(lo, hi)`` ranges that must keep equal sizes (``chunk``).
        blocked: reasons the space cannot be pruned (empty when it can).
    """

    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    channels: int = 0
    block: int = 1
    sections: list[tuple[int, int]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.blocked and bool(self.producers)


Piece = tuple[int, int, int]  # (space, lo, hi)


@dataclass(frozen=True)
class Layout:
    """The channels along dim ``dim`` of one tensor."""

    dim: int
    pieces: tuple[Piece, ...]
    ratio: Fraction = Fraction(1)

    def with_dim(self, dim: int) -> Layout:
        return Layout(dim, self.pieces, self.ratio)


class _Spaces:
    """Union-find over channel spaces, each with its Group."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: dict[int, Group] = {}

    def new(self, channels: int, producer: str | None = None) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.groups[sid] = Group(producers=[producer] if producer else [], channels=channels)
        if producer:
            self.groups[sid].members.append(Member(producer, "out", 0, 0, channels))
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def group(self, sid: int) -> Group:
        return self.groups[self.find(sid)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups.pop(rb), self.groups[ra]
        self.parent[rb] = ra
        for name in ("producers", "norms", "consumers", "followers", "members", "sections"):
            getattr(gb, name).extend(getattr(ga, name))
        gb.blocked += [r for r in ga.blocked if r not in gb.blocked]
        gb.block = math.lcm(gb.block, ga.block)

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for sid, _, _ in layout.pieces:
            g = self.group(sid)
            if reason not in g.blocked:
                g.blocked.append(reason)


def channel_groups(model: nn.Module, example: Any) -> dict[str, Group]:
    """The dependency group of every Conv/Linear layer's output channels, by layer name
    (depthwise convolutions map to the group their channels follow)."""
    return analyze(model, record(model, example))


def analyze(model: nn.Module, graph: Graph) -> dict[str, Group]:
    """Dependency groups from a recorded forward pass (see ``channel_groups``)."""
    an = _Analysis(model, graph)
    for node in graph.nodes:
        an.step(node)
    for t in graph.outputs:
        an.spaces.block(an.refs.get(id(t)), "its channels are the model's output")
    for g in an.spaces.groups.values():
        if any(lo % g.block or hi % g.block for lo, hi in g.sections) and not g.blocked:
            g.blocked.append(
                f"its blocks of {g.block} channels (GroupNorm groups or attention heads) "
                "straddle a grouped convolution's groups"
            )
    return {name: an.spaces.group(sid) for name, sid in an.owner.items()}


class _Analysis:
    def __init__(self, model: nn.Module, graph: Graph) -> None:
        self.modules = dict(model.named_modules())
        self.graph = graph
        self.spaces = _Spaces()
        self.refs: dict[int, Layout] = {}
        self.owner: dict[str, int] = {}

    # -- helpers -------------------------------------------------------------------------
    def ref(self, t: Any) -> Layout | None:
        return self.refs.get(id(t)) if isinstance(t, torch.Tensor) else None

    def block_inputs(self, node: Node, why: str) -> None:
        for t in node.inputs:
            self.spaces.block(self.ref(t), why)

    def out(self, node: Node, layout: Layout | None, index: int = 0) -> None:
        if layout is not None and index < len(node.outputs):
            self.refs[id(node.outputs[index])] = layout

    def add_member(self, layout: Layout, layer: str, role: str) -> None:
        if layout.ratio.denominator != 1:
            self.spaces.block(layout, f"layer {layer!r} reads them grouped into heads")
            return
        offset = 0
        for sid, lo, hi in layout.pieces:
            g = self.spaces.group(sid)
            m = Member(layer, role, offset, lo, hi, int(layout.ratio))
            g.members.append(m)
            if role == "in":
                g.consumers.append((layer, int(layout.ratio)))
            offset += hi - lo

    def new_space(self, n: int, producer: str | None, dim: int) -> Layout:
        sid = self.spaces.new(n, producer)
        if producer:
            self.owner[producer] = sid
        return Layout(dim, ((sid, 0, n),))

    # -- dispatch ------------------------------------------------------------------------
    def step(self, node: Node) -> None:
        if not any(id(t) in self.refs for t in node.inputs):
            if node.kind == "module":
                self.module(node, None)
            return
        if node.kind == "module":
            self.module(node, self.ref(node.inputs[0]) if node.inputs else None)
            return
        opsets.handle(self, node)

    def module(self, node: Node, first: Layout | None) -> None:
        name = str(node.target)
        m = self.modules[name]
        twice = self.graph.calls.get(name, 0) > 1
        why_twice = f"layer {name!r} is called more than once"
        if isinstance(m, PRODUCERS):
            self.producer(node, name, m, first, twice)
            return
        if isinstance(m, NORMS) and first is not None:
            if twice:
                self.spaces.block(first, why_twice)
            if first.dim != 1:
                self.spaces.block(first, f"layer {name!r} normalizes another dim")
                return
            for sid, _, _ in first.pieces:
                self.spaces.group(sid).norms.append(name)
            self.add_member(first, name, "out")
            self.out(node, first)
            return
        if isinstance(m, GROUP_NORMS) and first is not None:
            self.group_norm(name, m, first, twice)
            self.out(node, first)
            return
        if isinstance(m, nn.LayerNorm) and first is not None:
            x = node.inputs[0]
            if first.dim >= x.dim() - len(m.normalized_shape):
                self.spaces.block(first, f"layer {name!r} (LayerNorm) normalizes over them")
                return
            self.out(node, first)
            return
        self.block_inputs(node, f"layer {name!r} uses them")

    def producer(
        self, node: Node, name: str, m: nn.Module, first: Layout | None, twice: bool
    ) -> None:
        is_conv = isinstance(m, nn.Conv1d | nn.Conv2d)
        x = node.inputs[0]
        y = node.outputs[0]
        groups = cast(int, m.groups) if is_conv else 1
        depthwise = is_conv and groups > 1 and groups == m.in_channels == m.out_channels
        why_twice = f"layer {name!r} is called more than once"
        if depthwise and first is not None and first.dim == 1 and first.ratio == 1:
            # Channels pass through one filter each: the output follows the input.
            if twice:
                self.spaces.block(first, why_twice)
            for sid, _, _ in first.pieces:
                self.spaces.group(sid).followers.append(name)
            self.add_member(first, name, "out")
            self.owner[name] = first.pieces[0][0]
            self.out(node, first)
            return
        if first is not None:
            if twice:
                self.spaces.block(first, why_twice)
            elif groups != 1:
                self.grouped_input(first, name, groups)
            elif is_conv and (first.dim != 1 or first.ratio != 1):
                self.spaces.block(first, f"layer {name!r} does not read them as input channels")
            elif not is_conv and first.dim != x.dim() - 1:
                self.spaces.block(first, f"layer {name!r} does not read them as input features")
            else:
                self.add_member(first, name, "in")
        n = cast(int, m.out_channels if is_conv else m.out_features)
        out = self.new_space(n, name, 1 if is_conv else max(y.dim() - 1, 0))
        if twice:
            self.spaces.block(out, why_twice)
        if groups != 1:  # each group of filters keeps the same number of channels
            per = n // groups
            self.spaces.group(out.pieces[0][0]).sections.extend(
                (j * per, (j + 1) * per) for j in range(groups)
            )
        self.out(node, out)

    def _whole_space(self, first: Layout, why: str) -> Group | None:
        """The group of ``first``'s one channel piece when the piece is its whole space; else
        the space is blocked (``why`` + "part of a channel space") and None returned."""
        sid, lo, hi = first.pieces[0]
        g = self.spaces.group(sid)
        if (lo, hi) != (0, g.channels):
            self.spaces.block(first, f"{why} part of a channel space")
            return None
        return g

    def group_norm(self, name: str, m: nn.GroupNorm, first: Layout, twice: bool) -> None:
        """A GroupNorm normalizes channels in ``num_groups`` consecutive blocks: the space can
        lose whole blocks (the kept groups' statistics do not change) when the norm covers
        exactly this space, on the channel dim."""
        why = f"layer {name!r} (GroupNorm) normalizes"
        if twice:
            self.spaces.block(first, f"layer {name!r} is called more than once")
        if first.dim != 1 or first.ratio != 1:
            self.spaces.block(first, f"{why} another dim")
            return
        if len(first.pieces) != 1:
            self.spaces.block(first, f"{why} channels of more than one layer in its groups")
            return
        g = self._whole_space(first, why)
        if g is None:
            return
        g.block = math.lcm(g.block, m.num_channels // m.num_groups)
        g.norms.append(name)
        self.add_member(first, name, "out")

    def grouped_input(self, first: Layout, name: str, groups: int) -> None:
        """A grouped convolution reads its input channels in ``groups`` equal blocks: the
        space can lose channels when it is exactly this input, the same count per block."""
        why = f"layer {name!r} is a grouped convolution (groups={groups}) over"
        if first.dim != 1 or first.ratio != 1 or len(first.pieces) != 1:
            self.spaces.block(first, f"{why} more than one channel space")
            return
        g = self._whole_space(first, why)
        if g is None:
            return
        per = g.channels // groups
        self.add_member(first, name, "in")
        g.sections.extend((j * per, (j + 1) * per) for j in range(groups))


def param_name(graph: Graph, t: torch.Tensor) -> str:
    """How a message names a tensor without a prunable source."""
    name = graph.params.get(id(t))
    return repr(name) if name else f"a tensor of shape {tuple(t.shape)} with no prunable source"
