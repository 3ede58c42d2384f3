"""Merge int8 products that read the same row codes into one, in an exported ONNX graph.

A transformer's query, key and value read one input; ``DynQuantLinear`` already makes its row
codes once for the three (``modelzip.nn.dynamic.shared_rows``). In the exported graph each still
has its own ``MatMulIntegerToFloat`` and its own bias (and zero point) nodes, and at batch 1
each node costs ONNX Runtime about 7 us (measured: a chain of 500 ``Add`` nodes on one 32-token
MiniLM activation, 7 us each on 1 and on 2 threads, not faster on two). This
pass rewrites each such group as one product of the concatenated weights, the elementwise
steps after it once on the wide output, and one ``Split`` back into the original outputs: the
same arithmetic per output element, on MiniLM 7 fewer nodes per attention block.

Only exact rewrites are made: members must read the same codes, row scales and zero point,
have constant weights, weight scales and weight zero points, and be followed by the same
elementwise steps whose other operand is a constant per output column or ``shared * constant``
(the asymmetric rows' zero-point term).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

MATMUL = "MatMulIntegerToFloat"
_STEPS = {"Add", "Mul", "Sub", "Div"}


@dataclass
class _Step:
    node: Any
    op: str
    position: int  # where the running value enters the node (0 or 1)
    kind: str  # "const" (one value per output column) | "shared*const" (row term x column)
    shared: str = ""
    const: np.ndarray | None = None
    producer: Any = None  # the Mul node of a "shared*const" operand


class _Graph:
    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].t:
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}

    def only_consumer(self, name: str) -> Any:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def column_const(self, name: str, n: int) -> np.ndarray | None:
        """The constant ``name`` as one value per output column (``[n]``), if it is one."""
        c = self.consts.get(name)
        if c is None or c.dtype != np.float32:
            return None
        if c.size == 1:
            return np.full(n, c.reshape(()), dtype=np.float32)
        return c.reshape(n) if c.shape[-1] == n and c.size == n else None


def _chain(g: _Graph, node: Any, n: int) -> list[_Step]:
    """The elementwise steps that follow one product (its value flowing through each)."""
    steps: list[_Step] = []
    value = node.output[0]
    while (user := g.only_consumer(value)) is not None:
        if user.op_type not in _STEPS or len(user.input) != 2 or user.input[0] == user.input[1]:
            break
        position = list(user.input).index(value)
        other = user.input[1 - position]
        step = _Step(user, user.op_type, position, "const")
        if (c := g.column_const(other, n)) is not None:
            step.const = c
        elif (p := g.producer.get(other)) is not None and p.op_type == "Mul":
            consts = [g.column_const(i, n) for i in p.input]
            if g.only_consumer(other) is not user or sum(c is not None for c in consts) != 1:
                break
            k = 0 if consts[0] is not None else 1
            step.kind, step.const, step.producer = "shared*const", consts[k], p
            step.shared = p.input[1 - k]
        else:  # (a shared operand alone could be as wide as one member: not merged)
            break
        steps.append(step)
        value = user.output[0]
    return steps


def _same(a: _Step, b: _Step) -> bool:
    return (a.op, a.position, a.kind, a.shared) == (b.op, b.position, b.kind, b.shared)


def merge_parallel_products(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns how many products were
    merged away."""
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type != MATMUL or len(node.input) != 6:
            continue
        a, w, a_scale, w_scale, a_zp, w_zp = node.input
        if not all(x in g.consts for x in (w, w_scale, a_zp, w_zp)):
            continue
        n = g.consts[w].shape[-1]
        if g.consts[w].ndim != 2 or g.consts[w_zp].size != 1 or g.consts[w_zp].item() != 0:
            continue
        if g.consts[w_scale].dtype != np.float32 or g.consts[w_scale].size != n:
            continue
        zp = g.consts[a_zp]
        groups[(a, a_scale, zp.dtype.str, zp.tobytes(), g.consts[w].shape[0])].append(node)

    removed: set[int] = set()
    new_nodes: list[Any] = []
    merged = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        widths = [g.consts[m.input[1]].shape[1] for m in members]
        chains = [_chain(g, m, n) for m, n in zip(members, widths, strict=True)]
        depth = 0
        while all(len(c) > depth for c in chains) and all(
            _same(chains[0][depth], c[depth]) for c in chains[1:]
        ):
            depth += 1
        prefix = f"merged_{merged}_{members[0].name or members[0].output[0]}"

        def const(name: str, value: np.ndarray, prefix: str = prefix) -> str:
            model.graph.initializer.append(numpy_helper.from_array(value, f"{prefix}/{name}"))
            return f"{prefix}/{name}"

        w = const("w", np.concatenate([g.consts[m.input[1]] for m in members], axis=1))
        ws = np.concatenate([g.consts[m.input[3]].reshape(-1) for m in members])
        a, _, a_scale, _, a_zp, w_zp = members[0].input
        value = f"{prefix}/product"
        new_nodes.append(
            helper.make_node(
                MATMUL,
                [a, w, a_scale, const("w_scale", ws), a_zp, w_zp],
                [value],
                domain=members[0].domain,
                name=f"{prefix}/{MATMUL}",
            )
        )
        for i in range(depth):
            step = chains[0][i]
            column = np.concatenate([c[i].const for c in chains])
            other = const(f"step{i}", column)
            if step.kind == "shared*const":
                term = f"{prefix}/term{i}"
                new_nodes.append(helper.make_node("Mul", [step.shared, other], [term]))
                other = term
            inputs = [value, other] if step.position == 0 else [other, value]
            value = f"{prefix}/step{i}_out"
            new_nodes.append(helper.make_node(step.op, inputs, [value], name=f"{prefix}/{i}"))
        outs = [
            c[depth - 1].node.output[0] if depth else m.output[0]
            for m, c in zip(members, chains, strict=True)
        ]
        sizes = const("split", np.array(widths, dtype=np.int64))
        new_nodes.append(helper.make_node("Split", [value, sizes], outs, axis=-1))
        for m, c in zip(members, chains, strict=True):
            removed.add(id(m))
            for step in c[:depth]:
                removed.add(id(step.node))
                if step.producer is not None:
                    removed.add(id(step.producer))
        merged += len(members) - 1
    if merged:
        kept = [n for n in model.graph.node if id(n) not in removed]
        _set_nodes(model.graph, _toposort(kept + new_nodes, model.graph))
    return merged


def _toposort(nodes: list[Any], graph: Any) -> list[Any]:
    """``nodes`` in an order where each input is made before it is read (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    made_by = {out: k for k, node in enumerate(nodes) for out in node.output}
    order: list[Any] = []
    state = [0] * len(nodes)  # 0 new, 1 on the stack, 2 placed
    for start in range(len(nodes)):
        stack = [(start, 0)]
        while stack:
            k, j = stack.pop()
            if state[k] == 2:
                continue
            state[k] = 1
            inputs = list(nodes[k].input)
            while j < len(inputs) and (inputs[j] in ready or inputs[j] not in made_by):
                j += 1
            if j < len(inputs):
                dep = made_by[inputs[j]]
                stack.append((k, j + 1))
                if state[dep] == 0:
                    stack.append((dep, 0))
                continue
            state[k] = 2
            order.append(nodes[k])
            ready.update(nodes[k].output)
    return order


def _set_nodes(graph: Any, nodes: list[Any]) -> None:
    """Make ``nodes`` the graph's, without the constants no node reads any more (the merged
    members' weights would otherwise be stored twice)."""
    read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in read]
    copies = [type(n)() for n in nodes]
    for dst, src in zip(copies, nodes, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)
    kept = [t for t in graph.initializer if t.name in read]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


#: Inputs of ``MatMulIntegerToFloat`` that ONNX Runtime rewrites in place on CPUs without VNNI:
#: the int8 weight ``B`` (1) and its zero point (5).
_REWRITTEN_INPUTS = (1, 5)
#: The weight codes and zero point of a weight's ``DequantizeLinear`` (QDQ static layers).
_REWRITTEN_DQ_INPUTS = (0, 2)
_INT8 = 3  # onnx.TensorProto.INT8


def own_weight_constants(model: Any) -> int:
    """Give every ``MatMulIntegerToFloat`` its own copy of the weight and weight zero point
    it shares with another one (a layer with 16-bit rows runs two products of one weight), and
    every weight ``DequantizeLinear`` of a static layer its own weight zero point (the exporter
    folds the equal all-zero zero points of several layers into one constant).

    Why: on x86 CPUs without VNNI, ONNX Runtime's ``session.x64quantprecision`` (the option
    that keeps u8 x s8 products from saturating in int16, ``modelzip.export.ort_session``)
    converts each such weight to uint8 in place, and fails to initialize the session
    ("Attempt to replace the existing tensor") when two nodes read the same one. Copies cost
    the file the shared weights once more; the arithmetic is unchanged. Returns the number of
    inputs rewired."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    seen: set[str] = set()
    rewired = 0
    extra_nodes: list[Any] = []

    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def source(name: str) -> str:  # the exporter shares equal constants through Identity nodes
        while name in identity:
            name = identity[name]
        return name

    def int8_weight(name: str) -> bool:  # an int8 constant: a weight's codes
        name = source(name)
        if name in inits:
            return bool(inits[name].data_type == _INT8)
        return name in consts and consts[name].attribute[0].t.data_type == _INT8

    for node in graph.node:
        if node.op_type == MATMUL:
            positions = _REWRITTEN_INPUTS
        elif node.op_type == "DequantizeLinear" and node.input and int8_weight(node.input[0]):
            positions = _REWRITTEN_DQ_INPUTS  # a static layer's weight: ORT fuses it into
        else:  # QLinearConv / QLinearMatMul and rewrites the codes and zero point alike
            continue
        for pos in positions:
            if pos >= len(node.input) or not node.input[pos]:
                continue
            name = source(node.input[pos])
            if name not in seen:
                seen.add(name)
                continue
            copy_name = f"{name}__{node.name or rewired}"
            if name in inits:
                copy = type(inits[name])()
                copy.CopyFrom(inits[name])
                copy.name = copy_name
                graph.initializer.append(copy)
            elif name in consts:
                copy = type(consts[name])()
                copy.CopyFrom(consts[name])
                copy.name = f"{copy.name}__copy{rewired}"
                del copy.output[:]
                copy.output.append(copy_name)
                extra_nodes.append(copy)
            else:
                continue  # computed at run time: ORT does not rewrite it
            node.input[pos] = copy_name
            rewired += 1
    if extra_nodes:
        _set_nodes(graph, extra_nodes + list(graph.node))
    return rewired
