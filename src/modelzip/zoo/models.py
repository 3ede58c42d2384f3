"""Built-in models (the classic Deep Compression pair), sized for the data's input shape."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from modelzip.errors import ModelError, choices_text, did_you_mean


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
    """LeNet-300-100: the fully connected MNIST network of Deep Compression (Han et al.)."""

    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10):
        features = math.prod(in_shape)
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)


class LeNet5(nn.Sequential):
    """Caffe's LeNet-5: conv20 5x5, pool, conv50 5x5, pool, fc500, fc10.

    Inputs smaller than 28x28 (the 8x8 digits) get 'same' padding so both poolings fit.
    """

    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10):
        front, (c, h, w) = _as_image(tuple(in_shape))
        pad = 0 if min(h, w) >= 28 else 2
        super().__init__()
        self.reshape = front
        self.conv1 = nn.Conv2d(c, 20, 5, padding=pad)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        h2 = ((h + 2 * pad - 4) // 2 + 2 * pad - 4) // 2
        w2 = ((w + 2 * pad - 4) // 2 + 2 * pad - 4) // 2
        if h2 < 1 or w2 < 1:
            raise ModelError(f"lenet5: input {in_shape} is too small for two 5x5 convs")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * h2 * w2, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)


ZOO: dict[str, Callable[..., nn.Module]] = {"lenet300": LeNet300, "lenet5": LeNet5}


#: Every zoo name (the pretrained sentence encoder is built in ``source.py``).
ZOO_NAMES = (*ZOO, "minilm")


def zoo_model(name: str, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a zoo model for the data's input shape and class count."""
    if name not in ZOO:
        raise ModelError(
            f"unknown zoo model {name!r}{did_you_mean(name, ZOO_NAMES)}; "
            f"valid: {choices_text('zoo:' + k for k in ZOO_NAMES)}"
        )
    return ZOO[name](in_shape=tuple(in_shape), num_classes=num_classes)
