"""What methods need besides the model: data, a trainer, the teacher, device, seed, logger."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modelzip.errors import ConfigError
from modelzip.task import LossFn

if TYPE_CHECKING:
    from modelzip.bundle import DataBundle
    from modelzip.train import Trainer


@dataclass
class Context:
    """Carries the state a method may use; no globals.

    Attributes:
        data: train/val/test loaders for the task.
        trainer: the fine-tune loop every training stage uses.
        teacher: the model as it was before the recipe's first stage (frozen copy), used by
            distillation when no other teacher is given.
        device: where training runs.
        seed: the seed every random choice derives from.
        log: a logger writing to stderr.
        notes: free-form per-stage records a method wants in the report (e.g. layers skipped
            and why). The pipeline clears it before each stage and stores it with the metrics.
        deferred: work a stage asks for once the recipe's last stage is done (``defer``), by
            name: the pipeline runs each once, after the last stage, and records what it
            returned in that stage's notes under ``deferred``.
    """

    data: DataBundle
    trainer: Trainer
    teacher: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("modelzip"))
    notes: dict[str, Any] = field(default_factory=dict)
    deferred: dict[str, Callable[[nn.Module, Context], Any]] = field(default_factory=dict)

    def defer(self, name: str, fn: Callable[[nn.Module, Context], Any]) -> None:
        """Run ``fn(model, ctx)`` after the recipe's last stage (once per ``name``), e.g.
        folding BatchNorm once every fine-tuning stage has trained with it."""
        self.deferred.setdefault(name, fn)

    def default_loss(self) -> LossFn:
        """The training loss of the data's task (``modelzip.task``): cross-entropy on labels
        for classifiers; for embedding models, cosine distance to the original model's (the
        teacher's) outputs."""
        task = self.data.task
        if task.needs_reference and self.teacher is None:
            raise ConfigError(
                f"training for a {task.name} task needs the original model as teacher"
            )
        return task.loss_fn(reference=self.teacher if task.needs_reference else None)

    def fit(self, model: nn.Module, *, loss_fn: LossFn | None = None, **options: Any) -> float:
        """Train ``model`` on the train split with the task's loss (``default_loss``) unless
        ``loss_fn`` is given; ``options`` go to ``Trainer.fit`` (epochs, lr, on_step, ...)."""
        return self.trainer.fit(
            model, self.data.train, loss_fn=loss_fn or self.default_loss(), **options
        )

    def example(self) -> Any:
        """A small batch of real inputs (for tracing and layer roles); None without data."""
        return self.data.example_inputs() if self.data is not None else None

    def generator(self, offset: int = 0) -> torch.Generator:
        """A torch generator seeded from the run's seed (offset for independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)
