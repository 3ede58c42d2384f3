"""Helpers shared by the tests: small models built the way users build them, a context."""

from __future__ import annotations

import torch

from modelzip.context import Context
from modelzip.source import ModelSource
from modelzip.train import Trainer


def fresh(name: str, data) -> torch.nn.Module:
    """An untrained zoo model for ``data`` (seeded), recorded so it can be saved to .mzip."""
    torch.manual_seed(0)
    kw = {"in_shape": list(data.sample_shape), "num_classes": data.num_classes}
    return ModelSource("zoo", name, kw).build().eval()


def make_ctx(data, seed: int = 0) -> Context:
    return Context(data=data, trainer=Trainer(progress=False, seed=seed), seed=seed)


class CalibrationOnly:
    """The one thing calibration reads: a ``val`` split of input batches."""

    def __init__(self, batches):
        self.loaders = {"val": [(x, x) for x in batches]}
        self.name = "tiny"

    @property
    def val(self):
        return self.loaders["val"]
