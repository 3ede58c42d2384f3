"""Record what a model really computes on an example input (a forward pass, not symbolic).

``record(model, example)`` runs the model once under a ``TorchFunctionMode`` and writes down
every torch function and tensor method it calls, with the real input and output tensors.
Python control flow in ``forward`` (``if x.dim() == 2: ...``) simply takes the branch the
example takes, as with Torch-Pruning's autograd trace or ``torch.export`` on an example.

Layers the analyses reason about (Conv, Linear, norms, embeddings) are recorded as one
node each and their insides are not (so pruning masks, fake-quant and other
parametrizations on their weights stay out of the graph).

Example:
    >>> graph = record(model, torch.zeros(2, 1, 8, 8))        # doctest: +SKIP
    >>> [n.target for n in graph.nodes][:2]                    # doctest: +SKIP
    ['stem', 'stem_bn']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from modelzip.errors import UnsupportedError

#: Modules recorded as one node (what the analyses understand as a whole).
LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.Embedding,
)


@dataclass
class Node:
    """One call: a leaf module (``kind`` "module", ``target`` its name) or a function.

    Attributes:
        kind: "module" or "function".
        target: the module's qualified name, or the function object.
        inputs: every tensor among the arguments, in order (lists such as ``torch.cat``'s
            first argument are flattened).
        args: the positional arguments as given (tensors included).
        kwargs: the keyword arguments as given.
        outputs: every tensor in the result, in order.
    """

    kind: str
    target: Any
    inputs: list[torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor]

    @property
    def name(self) -> str:
        """How messages name the op: ``layer 'conv1'`` or ``cat()``."""
        if self.kind == "module":
            return f"layer {self.target!r}"
        name = getattr(self.target, "__name__", str(self.target))
        return f"{name.strip('_')}()"


@dataclass
class Graph:
    """The recorded calls in execution order, plus the model's inputs and outputs."""

    nodes: list[Node] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    #: id of a parameter or buffer tensor -> its qualified name (for messages).
    params: dict[int, str] = field(default_factory=dict)
    #: how often each leaf module was called.
    calls: dict[str, int] = field(default_factory=dict)


def tensors_in(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside nested tuples, lists and dicts (model outputs such as ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 6 and isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors_in(o, depth + 1)
    elif depth < 6 and isinstance(obj, dict):
        for o in obj.values():
            yield from tensors_in(o, depth + 1)


class _Recorder(TorchFunctionMode):
    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.depth = 0  # > 0 while inside a leaf module

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            ins = [*tensors_in(args), *tensors_in(kwargs)]
            outs = list(tensors_in(out))
            if ins and outs:
                self.graph.nodes.append(Node("function", func, ins, args, kwargs, outs))
        return out


def record(model: nn.Module, example: Any) -> Graph:
    """Run ``model`` once on ``example`` (eval mode, no gradients) and record the calls.

    Raises:
        UnsupportedError: when the model does not run on the example (the message names
            the exception).
    """
    graph = Graph()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        graph.params.setdefault(id(t), name)
    names = {m: n for n, m in model.named_modules()}
    rec = _Recorder(graph)
    handles = []

    def pre(module: nn.Module, args: Any) -> None:
        rec.depth += 1

    def post(module: nn.Module, args: Any, out: Any) -> None:
        rec.depth -= 1
        if rec.depth == 0:
            name = names[module]
            graph.calls[name] = graph.calls.get(name, 0) + 1
            ins = list(tensors_in(args))
            graph.nodes.append(Node("module", name, ins, tuple(args), {}, list(tensors_in(out))))

    for m in model.modules():
        if isinstance(m, LEAVES):
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    inputs = example if isinstance(example, (tuple, list)) else (example,)
    graph.inputs = list(tensors_in(inputs))
    try:
        with torch.no_grad(), rec:
            out = model(*inputs)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnsupportedError(
            f"the model does not run on the example batch: {type(exc).__name__}: {first}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    graph.outputs = list(tensors_in(out))
    return graph
