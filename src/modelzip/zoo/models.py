"""Built-in models (the classic Deep Compression pair), sized for the data's input shape."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from modelzip.errors import ModelError, choices_text, did_you_mean

#: The most weights a zoo model may have (its widths can come from a file's header).
MAX_PARAMS = 1 << 26


def _as_image(in_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, int, int]]:
    """A reshaping front (or Identity) and the (C, H, W) the convolutions will see."""
    if len(in_shape) == 3:
        return nn.Identity(), (in_shape[0], in_shape[1], in_shape[2])
    if len(in_shape) == 2:
        return nn.Unflatten(1, (1, *in_shape)), (1, in_shape[0], in_shape[1])
    side = math.isqrt(in_shape[0]) if len(in_shape) == 1 else 0
    if side * side != (in_shape[0] if len(in_shape) == 1 else -1):
        raise ModelError(
            f"lenet5 needs image inputs (C,H,W), (H,W) or a square number of features; "
            f"got input shape {in_shape}"
        )
    return nn.Unflatten(1, (1, side, side)), (1, side, side)


class LeNet300(nn.Sequential):
    """LeNet-300-100: the fully connected MNIST network of Deep Compression (Han et al.).

    ``hidden`` sets the hidden widths (layers ``fc1..fcN``), so a distillation student such as
    784-100-10 is ``LeNet300(hidden=(100,))``; the default builds the classic 300-100.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        hidden: tuple[int, ...] | list[int] = (300, 100),
    ):
        widths = [math.prod(in_shape), *_positive_widths(hidden, "lenet300 hidden")]
        size = sum(a * b for a, b in zip(widths, [*widths[1:], num_classes], strict=True))
        if size > MAX_PARAMS:  # widths may come from a (hostile) .mzip: refuse, never allocate
            raise ModelError(f"lenet300 with hidden={list(hidden)} would hold {size:,} weights")
        super().__init__()
        self.flatten = nn.Flatten()
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True), 1):
            setattr(self, f"fc{i}", nn.Linear(w_in, w_out))
            setattr(self, f"relu{i}", nn.ReLU())
        setattr(self, f"fc{len(widths)}", nn.Linear(widths[-1], num_classes))


def _positive_widths(hidden: tuple[int, ...] | list[int], name: str) -> list[int]:
    if not isinstance(hidden, list | tuple):
        raise ModelError(f"{name} must be a list of positive integers, got {hidden!r}")
    widths = list(hidden)
    if len(widths) > 16:
        raise ModelError(f"{name} allows at most 16 layers, got {len(widths)}")
    if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
        raise ModelError(f"{name} must be a non-empty list of positive integers, got {hidden!r}")
    return widths


def _scaled(width: float, channels: int) -> int:
    """A layer width scaled by ``width`` (at least 1 unit)."""
    return max(1, round(channels * width))


class LeNet5(nn.Sequential):
    """Caffe's LeNet-5: conv20 5x5, pool, conv50 5x5, pool, fc500, fc10.

    Inputs smaller than 28x28 (the 8x8 digits) get 'same' padding so both poolings fit.
    ``width`` scales every hidden width (conv channels 20/50 and the 500 units of fc1), so
    ``LeNet5(width=0.25)`` is a student with a quarter of the channels (5, 12, 125).
    """

    def __init__(
        self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, width: float = 1.0
    ):
        if not isinstance(width, int | float) or isinstance(width, bool) or not 0 < width <= 4:
            raise ModelError(f"lenet5 width must be a number in (0, 4], got {width!r}")
        c1, c2, f1 = _scaled(width, 20), _scaled(width, 50), _scaled(width, 500)
        front, (c, h, w) = _as_image(tuple(in_shape))
        pad = 0 if min(h, w) >= 28 else 2
        h2 = ((h + 2 * pad - 4) // 2 + 2 * pad - 4) // 2
        w2 = ((w + 2 * pad - 4) // 2 + 2 * pad - 4) // 2
        if h2 < 1 or w2 < 1:
            raise ModelError(f"lenet5: input {in_shape} is too small for two 5x5 convs")
        if (c * c1 * 25 + c2 * h2 * w2 * f1) > MAX_PARAMS:  # shapes may come from a file
            raise ModelError(f"lenet5 for input {in_shape} would hold too many weights")
        super().__init__()
        self.reshape = front
        self.conv1 = nn.Conv2d(c, c1, 5, padding=pad)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=pad)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * h2 * w2, f1)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(f1, num_classes)


#: Zoo names. The sized variants are ready-made distillation students; any zoo model also takes
#: its width options as keyword arguments (``hidden`` for lenet300, ``width`` for lenet5).
ZOO: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "lenet300-100": partial(LeNet300, hidden=(100,)),
    "lenet5-half": partial(LeNet5, width=0.5),
    "lenet5-quarter": partial(LeNet5, width=0.25),
}


#: Every zoo name (the pretrained sentence encoder is built in ``source.py``).
ZOO_NAMES = (*ZOO, "minilm")


def zoo_model(name: str, in_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a zoo model for the data's input shape and class count (``kwargs``: widths)."""
    if name not in ZOO:
        raise ModelError(
            f"unknown zoo model {name!r}{did_you_mean(name, ZOO_NAMES)}; "
            f"valid: {choices_text('zoo:' + k for k in ZOO_NAMES)}"
        )
    factory = ZOO[name]
    base = factory.func if isinstance(factory, partial) else factory
    valid = [p for p in inspect.signature(base).parameters if p not in ("in_shape", "num_classes")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ModelError(
            f"zoo:{name} has no option {unknown[0]!r}; valid options: {', '.join(valid)}"
        )
    return factory(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
