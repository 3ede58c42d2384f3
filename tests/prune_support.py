"""Helpers for the pruning tests: small models built the way users build them, a context.

(A plain module rather than conftest.py, so it merges cleanly with other test suites.)"""

from __future__ import annotations

import torch

import modelzip as mz
from modelzip.context import Context
from modelzip.source import ModelSource
from modelzip.train import Trainer


def load_digits():
    return mz.load_data("digits")


def fresh(name: str, data) -> torch.nn.Module:
    """An untrained zoo model for ``data`` (seeded), recorded so it can be saved to .mzip."""
    torch.manual_seed(0)
    kw = {"in_shape": list(data.sample_shape), "num_classes": data.num_classes}
    return ModelSource("zoo", name, kw).build().eval()


def make_ctx(data, seed: int = 0) -> Context:
    return Context(data=data, trainer=Trainer(progress=False, seed=seed), seed=seed)


# Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
torch.set_num_threads(1)
