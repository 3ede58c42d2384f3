"""How each torch function moves channel layouts (the per-op rules of ``graph.deps``).

Functions are told apart by name (``add``, ``view``, ``cat``...), as the recorded call
gives them: ``x + y`` arrives as ``Tensor.add``, ``F.relu(x)`` as ``relu``. An op not
listed here that touches channels blocks them, naming the op.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from modelzip.graph.deps import Layout, _Analysis
    from modelzip.graph.trace import Node

#: Same shape out as in, each channel computed from itself only.
PRESERVING = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_", "elu",
    "selu", "celu", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardsigmoid",
    "hardtanh", "hardtanh_", "mish", "softplus", "softsign", "prelu", "rrelu", "threshold",
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach", "to", "float", "half",
    "double", "bfloat16", "type_as", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square",
    "pow", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "erf", "sin", "cos",
    "nan_to_num", "logit", "reciprocal",
    # pooling and resizing: spatial dims only (checked: the channel dim keeps its size)
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "lp_pool2d", "interpolate", "upsample", "pixel_shuffle_",
    "pad", "max_pool2d_with_indices", "fn",
}  # fmt: skip
#: Elementwise ops of several tensors (broadcasting).
ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "truediv",
    "radd", "rsub", "rmul", "rdiv", "rtruediv", "iadd", "isub", "imul", "itruediv",
    "maximum", "minimum", "where", "masked_fill", "masked_fill_", "addcmul", "lerp",
}  # fmt: skip
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod"}
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
            "reshape_as", "squeeze_", "unsqueeze_"}  # fmt: skip
#: Ops along one dim: fine unless that dim is the channel dim.
ALONG_DIM = {"softmax", "log_softmax", "cumsum", "cumprod", "flip", "roll", "sort", "argsort"}
CONCAT = {"cat", "concat", "concatenate"}


def _name(node: Node) -> str:
    return str(getattr(node.target, "__name__", "")).strip("_")


def _arg(node: Node, index: int, key: str, default: Any = None) -> Any:
    if key in node.kwargs:
        return node.kwargs[key]
    return node.args[index] if len(node.args) > index else default


def handle(an: _Analysis, node: Node) -> None:
    """Apply the rule of the node's op (or block what it touches)."""
    name = _name(node)
    x = node.args[0] if node.args and isinstance(node.args[0], torch.Tensor) else None
    first = an.ref(x)
    why = f"{node.name} uses them"
    y = node.outputs[0]
    if name in PRESERVING and first is not None and x is not None:
        if y.dim() == x.dim() and y.shape[first.dim] == x.shape[first.dim]:
            an.out(node, first)
            return
        an.spaces.block(first, f"{node.name} changes the channel dim")
        return
    elif name in ELEMENTWISE:
        _elementwise(an, node)
        return
    elif name in RESHAPES and first is not None and x is not None:
        an.out(node, _reshape(an, first, tuple(x.shape), tuple(y.shape), node.name))
        return
    elif name in ("transpose", "swapaxes", "permute", "t", "movedim") and first is not None:
        an.out(node, _permute(an, node, name, first, x))
        return
    elif name in REDUCTIONS and first is not None and x is not None:
        an.out(node, _reduce(an, node, first, x))
        return
    elif name in ALONG_DIM and first is not None and x is not None:
        d = _arg(node, 1, "dim", -1)
        if isinstance(d, int) and d % x.dim() != first.dim:
            an.out(node, first)
            return
        an.spaces.block(first, f"{node.name} works along them")
        return
    elif name in CONCAT:
        _concat(an, node)
        return
    elif name == "chunk" and first is not None and x is not None:
        _chunk(an, node, first, x)
        return
    elif name in ("split", "split_with_sizes", "tensor_split", "unbind") and first is not None:
        d = int(_arg(node, 2 if name != "unbind" else 1, "dim", 0)) % max(y.dim(), 1)
        if name != "unbind" and x is not None and d != first.dim:
            for i in range(len(node.outputs)):
                an.out(node, first, i)
            return
        an.spaces.block(first, f"{node.name} cuts them into fixed sizes (chunk() can follow)")
        return
    elif name in ("matmul", "bmm") and len(node.inputs) == 2:
        _matmul(an, node)
        return
    elif name == "scaled_dot_product_attention":
        _attention(an, node)
        return
    elif name == "getitem" and first is not None and x is not None:
        an.out(node, _getitem(an, node, first, x))
        return
    an.block_inputs(node, why)


def _spans(shape: tuple[int, ...], out_ndim: int, dim: int) -> bool:
    """Whether a tensor of ``shape``, broadcast to ``out_ndim`` dims, varies along ``dim``."""
    idx = dim - (out_ndim - len(shape))
    return 0 <= idx < len(shape) and shape[idx] != 1


def _elementwise(an: _Analysis, node: Node) -> None:
    y = node.outputs[0]
    spaced: list[Layout] = []
    for t in node.inputs:
        r = an.ref(t)
        if r is not None:
            spaced.append(r.with_dim(r.dim + y.dim() - t.dim()))
    if not spaced:
        return
    base = spaced[0]
    for t in node.inputs:
        if an.ref(t) is None and _spans(tuple(t.shape), y.dim(), base.dim):
            from modelzip.graph.deps import param_name

            an.block_inputs(node, f"{node.name} combines them with {param_name(an.graph, t)}")
            return
    for r in spaced[1:]:
        if not _same_layout(an, base, r):
            an.block_inputs(node, f"{node.name} combines channels laid out differently")
            return
        for (sa, _, _), (sb, _, _) in zip(base.pieces, r.pieces, strict=True):
            an.spaces.union(sa, sb)  # a residual connection: both keep the same channels
    an.out(node, base)


def _same_layout(an: _Analysis, a: Layout, b: Layout) -> bool:
    if (a.dim, a.ratio, len(a.pieces)) != (b.dim, b.ratio, len(b.pieces)):
        return False
    for (sa, la, ha), (sb, lb, hb) in zip(a.pieces, b.pieces, strict=True):
        ca, cb = an.spaces.group(sa).channels, an.spaces.group(sb).channels
        if (la, ha, ca) != (lb, hb, cb):
            return False
    return True


def _reshape(
    an: _Analysis, ref: Layout, shape_in: tuple[int, ...], shape_out: tuple[int, ...], op: str
) -> Layout | None:
    """Follow the channel dim through a reshape (merge with following dims, or split)."""
    d = ref.dim
    prefix = math.prod(shape_in[:d])
    e, acc = 0, 1
    while e < len(shape_out) and acc < prefix:
        acc *= shape_out[e]
        e += 1
    while e < len(shape_out) - 1 and shape_out[e] == 1 and shape_in[d] != 1:
        e += 1
    if acc != prefix or e >= len(shape_out):
        an.spaces.block(ref, f"{op} moves the channels")
        return None
    size_in, size_out = shape_in[d], shape_out[e]
    ratio = ref.ratio
    if size_out >= size_in:  # merged with the following dims
        k, inner = d + 1, 1
        while inner * size_in < size_out and k < len(shape_in):
            inner *= shape_in[k]
            k += 1
        if inner * size_in != size_out:
            an.spaces.block(ref, f"{op} moves the channels")
            return None
        ratio *= inner
    else:  # split: each position of the new dim covers several of the old
        if size_in % size_out:
            an.spaces.block(ref, f"{op} moves the channels")
            return None
        ratio /= Fraction(size_in // size_out)
    if ratio.numerator != 1 and ratio.denominator != 1:
        an.spaces.block(ref, f"{op} moves the channels")
        return None
    if ratio.denominator > 1:
        width = ratio.denominator  # channels per position: removed in whole blocks
        for sid, lo, hi in ref.pieces:
            g = an.spaces.group(sid)
            if lo % width or hi % width:
                an.spaces.block(ref, f"{op} splits them unevenly")
                return None
            g.block = math.lcm(g.block, width)
    return type(ref)(e, ref.pieces, ratio)


def _permute(
    an: _Analysis, node: Node, name: str, ref: Layout, x: torch.Tensor | None
) -> Layout | None:
    nd = x.dim() if x is not None else 0
    if name in ("transpose", "swapaxes"):
        a, b = (int(_arg(node, 1, "dim0")) % nd, int(_arg(node, 2, "dim1")) % nd)
        d = b if ref.dim == a else a if ref.dim == b else ref.dim
    elif name == "t":
        d = (1 - ref.dim) if nd == 2 else ref.dim
    elif name == "permute":
        dims = node.args[1:] if len(node.args) > 2 else _arg(node, 1, "dims")
        perm = [int(p) % nd for p in dims]
        d = perm.index(ref.dim)
    else:
        an.spaces.block(ref, f"{node.name} moves the channels")
        return None
    return ref.with_dim(d)


def _reduce(an: _Analysis, node: Node, ref: Layout, x: torch.Tensor) -> Layout | None:
    dims = _arg(node, 1, "dim")
    if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
        an.spaces.block(ref, f"{node.name} reduces over them")
        return None
    dims_t = [int(d) % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    if ref.dim in dims_t:
        an.spaces.block(ref, f"{node.name} reduces over them")
        return None
    keep = bool(_arg(node, 2, "keepdim", False))
    shift = 0 if keep else sum(1 for d in dims_t if d < ref.dim)
    return ref.with_dim(ref.dim - shift)


def _concat(an: _Analysis, node: Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs.get("tensors", [])
    y = node.outputs[0]
    d = int(_arg(node, 1, "dim", 0)) % y.dim()
    refs = [an.ref(t) for t in tensors]
    spaced = [r for r in refs if r is not None]
    if any(r.dim != d for r in spaced):
        # Concatenated along another dim: the channels must line up in every part.
        if any(r is None for r in refs) or not all(_same_layout(an, spaced[0], r) for r in spaced):
            an.block_inputs(node, f"{node.name} joins them with tensors laid out differently")
            return
        for r in spaced[1:]:
            for (sa, _, _), (sb, _, _) in zip(spaced[0].pieces, r.pieces, strict=True):
                an.spaces.union(sa, sb)
        an.out(node, spaced[0])
        return
    first = spaced[0]
    ratio = first.ratio
    pieces: list[tuple[int, int, int]] = []
    for t, part in zip(tensors, refs, strict=True):
        if part is None:  # a part without a prunable source: its channels stay
            from modelzip.graph.deps import param_name

            n = t.shape[d] / ratio
            if n.denominator != 1:
                an.block_inputs(node, f"{node.name} joins them unevenly")
                return
            sid = an.spaces.new(int(n))
            an.spaces.group(sid).blocked.append(f"it comes from {param_name(an.graph, t)}")
            pieces.append((sid, 0, int(n)))
        elif part.ratio != ratio:
            an.block_inputs(node, f"{node.name} joins channels of different widths")
            return
        else:
            pieces.extend(part.pieces)
    an.out(node, type(first)(d, tuple(pieces), ratio))


def _chunk(an: _Analysis, node: Node, ref: Layout, x: torch.Tensor) -> None:
    d = int(_arg(node, 2, "dim", 0)) % x.dim()
    if d != ref.dim:
        for i in range(len(node.outputs)):
            an.out(node, ref, i)
        return
    if len(ref.pieces) != 1 or ref.ratio != 1:
        an.spaces.block(ref, f"{node.name} splits channels of several sources")
        return
    sid, lo, _ = ref.pieces[0]
    g = an.spaces.group(sid)
    start = lo
    sections = []
    for i, t in enumerate(node.outputs):
        n = t.shape[d]
        sections.append((start, start + n))
        an.out(node, type(ref)(d, ((sid, start, start + n),)), i)
        start += n
    if len({b - a for a, b in sections}) != 1:
        an.spaces.block(ref, f"{node.name} splits them into unequal parts")
        return
    g.sections.extend(sections)


def _matmul(an: _Analysis, node: Node) -> None:
    a, b = node.inputs
    ra, rb = an.ref(a), an.ref(b)
    y = node.outputs[0]
    if a.dim() < 3 or b.dim() < 3:
        an.block_inputs(node, f"{node.name} mixes them")
        return
    out: Layout | None = None
    pairs = []
    for r, t, contracted, kept in (
        (ra, a, a.dim() - 1, a.dim() - 2),
        (rb, b, b.dim() - 2, b.dim() - 1),
    ):
        if r is None:
            continue
        if r.dim == contracted:
            pairs.append(r)
        elif r.dim == kept:
            out = r.with_dim(y.dim() - (2 if t is a else 1))
        else:  # a batch dim (attention heads)
            pairs.append(r.with_dim(r.dim + y.dim() - t.dim()))
            out = r.with_dim(r.dim + y.dim() - t.dim())
    batch = [r for r in pairs if r.dim < y.dim() - 2]
    contracted_refs = [r for r in pairs if r.dim >= y.dim() - 2]
    for group in (batch, contracted_refs):
        for r in group[1:]:
            if not _same_layout(an, group[0], r):
                an.block_inputs(node, f"{node.name} combines channels laid out differently")
                return
            for (sa, _, _), (sb, _, _) in zip(group[0].pieces, r.pieces, strict=True):
                an.spaces.union(sa, sb)
    if len(contracted_refs) == 1 or (batch and len(batch) == 1 and (ra is None or rb is None)):
        an.block_inputs(node, f"{node.name} contracts them with a tensor of no prunable source")
        return
    if batch:
        out = batch[0]
    an.out(node, out)


def _attention(an: _Analysis, node: Node) -> None:
    q, k, v = (node.args[i] if len(node.args) > i else None for i in range(3))
    refs = [an.ref(t) for t in (q, k, v)]
    if any(r is None for r in refs) or q is None or v is None:
        an.block_inputs(node, f"{node.name} mixes them with tensors of no prunable source")
        return
    rq, rk, rv = (r for r in refs if r is not None)
    nd = q.dim()
    heads = [r for r in (rq, rk, rv) if r.dim < nd - 2]
    if len(heads) != 3 or not all(_same_layout(an, heads[0], r) for r in heads):
        an.block_inputs(node, f"{node.name} mixes them (only whole heads can be removed)")
        return
    for r in heads[1:]:
        for (sa, _, _), (sb, _, _) in zip(heads[0].pieces, r.pieces, strict=True):
            an.spaces.union(sa, sb)
    an.out(node, rv)


def _getitem(an: _Analysis, node: Node, ref: Layout, x: torch.Tensor) -> Layout | None:
    idx = node.args[1] if len(node.args) > 1 else None
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis or i is None or isinstance(i, torch.Tensor) for i in items):
        an.spaces.block(ref, f"{node.name} indexes them")
        return None
    d = ref.dim
    if len(items) > d and items[d] != slice(None):
        an.spaces.block(ref, f"{node.name} slices them")
        return None
    dropped = sum(1 for i in items[:d] if isinstance(i, int))
    return ref.with_dim(d - dropped)
