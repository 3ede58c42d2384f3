"""The training loop used for baselines and every fine-tuning stage."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import ConfigError
from modelzip.progress import bar
from modelzip.task import Inputs, LossFn, run_model, split_batch, to_device

OPTIMIZERS = ("adam", "sgd", "adamw")


def cross_entropy(model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
    """Plain classification loss (the ``Classification`` task's)."""
    return F.cross_entropy(run_model(model, x), y)


@dataclass
class Trainer:
    """Mini-batch training with a progress bar on stderr (on a terminal, when ``progress``).

    Example:
        >>> Trainer(progress=False).fit(model, data.train, epochs=2, lr=1e-3)   # doctest: +SKIP
    """

    progress: bool = True
    device: torch.device = torch.device("cpu")
    seed: int = 0

    def fit(
        self,
        model: nn.Module,
        loader: Iterable,
        *,
        epochs: int,
        lr: float,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        loss_fn: LossFn = cross_entropy,
        params: Iterable[nn.Parameter] | None = None,
        on_step: Callable[[int], None] | None = None,
        description: str = "train",
    ) -> float:
        """Train ``model`` in place; returns the mean loss of the last epoch.

        ``on_step(step)`` runs after every optimizer step (gradual pruning schedules hook in
        here). Parameters with ``requires_grad=False`` are not optimized.
        """
        if epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {epochs}")
        if epochs == 0:
            return float("nan")
        torch.manual_seed(self.seed)
        # Same seed, same batch order: a loader's shuffle generator would otherwise carry its
        # state from one training to the next.
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.seed)
        trainable = [
            p for p in (params if params is not None else model.parameters()) if p.requires_grad
        ]
        if not trainable:
            return float("nan")
        opt = make_optimizer(optimizer, trainable, lr, weight_decay)
        model.to(self.device).train()
        steps_per_epoch = len(cast(Sized, loader)) if hasattr(loader, "__len__") else None
        step, last = 0, float("nan")
        steps = (steps_per_epoch or 0) * epochs or None
        with bar(description, steps, enabled=self.progress) as advance:
            for _ in range(epochs):
                total, count = 0.0, 0
                for batch in loader:  # (x, y) or (x1, x2, ..., y)
                    x, y = split_batch(batch)
                    x, y = to_device(x, self.device), y.to(self.device)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model, x, y)
                    loss.backward()
                    opt.step()
                    step += 1
                    if on_step is not None:
                        on_step(step)
                    total += float(loss.detach()) * len(y)  # targets: one per sample
                    count += len(y)
                    advance()
                last = total / max(count, 1)
        model.eval()
        return last


def make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build one of the supported optimizers by name."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
