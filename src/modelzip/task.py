"""What a model is for: one ``Task`` object with its loss, its metric and what it compares with.

Training, evaluation, importance scores (Taylor pruning), distillation reports and search all
ask the data's task instead of branching on a name:

- ``Classification``: targets are class labels; the loss is cross-entropy, the metric top-1
  ``accuracy``.
- ``Embedding``: the model maps inputs to vectors and the target is the original model's
  vectors (the *reference*, the frozen model before compression); the loss is the cosine
  distance to them, the metric ``cosine_mean``.
- ``Regression``: targets are real numbers (one or several per sample); the loss is the mean
  squared error, the metric ``r2``, the coefficient of determination over the split
  (``1 - SSE / SST``: 1 is perfect, 0 predicts no better than the split's mean). A budget in
  "points" is then points of R^2 x 100, as for accuracy.

A batch is ``(x, y)`` or ``(x1, x2, ..., y)``: every element but the last is an input of the
model (``model(x1, x2, ...)``), the last is the target.

Example:
    >>> task = Classification()
    >>> task.metric
    'accuracy'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.errors import DataError
from modelzip.ops.distill import kd_loss

#: A model's inputs: one tensor, or a tuple of them.
Inputs = torch.Tensor | tuple[torch.Tensor, ...]
#: loss(model, inputs, target) -> scalar, what the trainer minimises.
LossFn = Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor]:
    """``(inputs, target)`` of a batch: the last element is the target, the rest inputs."""
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise DataError(
            f"a batch must be (inputs..., target), got {type(batch).__name__} "
            f"of length {len(batch) if isinstance(batch, tuple | list) else 1}"
        )
    *xs, y = batch
    return (xs[0] if len(xs) == 1 else tuple(xs)), y


def run_model(model: nn.Module, x: Inputs) -> torch.Tensor:
    """``model(x)`` for one input tensor, ``model(*x)`` for several."""
    return model(*x) if isinstance(x, tuple) else model(x)


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    """Move one input tensor or each of several to ``device``."""
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def batch_len(x: Inputs) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


class Task:
    """Base of the tasks: subclasses define the loss and the per-batch metric."""

    name: ClassVar[str] = ""
    #: the key of the quality metric in evaluation results
    metric: ClassVar[str] = "accuracy"
    #: how reports name that metric
    label: ClassVar[str] = "accuracy"
    #: whether the loss and metric compare with a reference model's outputs
    needs_reference: ClassVar[bool] = False

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> torch.Tensor:
        """The training loss of one batch's outputs."""
        raise NotImplementedError

    def batch_metric(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> tuple[float, int]:
        """(sum of the metric over the batch, number of samples); a metric that is not a mean
        over samples overrides ``batch_stats`` and ``finish`` instead (``Regression``)."""
        raise NotImplementedError

    def check_output(self, out: torch.Tensor, num_classes: int, where: str) -> None:
        """A DataError when the model's outputs cannot serve this task."""

    def distill_loss(
        self,
        out: torch.Tensor,
        teacher_out: torch.Tensor,
        target: torch.Tensor,
        *,
        alpha: float,
        temperature: float,
    ) -> torch.Tensor:
        """The loss of a student learning from a teacher's outputs: by default the task's
        loss with the teacher's outputs as the reference."""
        return self.loss(out, target, teacher_out)

    # --- shared plumbing, the same for every task ------------------------------------

    def _reference(self, reference: nn.Module | None) -> nn.Module | None:
        if not self.needs_reference:
            return None  # the metric does not use it: never run it
        if reference is None:
            raise DataError(
                f"{self.name} tasks compare with the original model's outputs: "
                "pass the reference model"
            )
        return reference

    def loss_fn(self, reference: nn.Module | None = None) -> LossFn:
        """``loss(model, inputs, target)`` for the trainer."""
        ref = self._reference(reference)

        def task_loss(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
            ref_out = None
            if ref is not None:
                with torch.no_grad():
                    ref_out = run_model(ref, x)
            return self.loss(run_model(model, x), y, ref_out)

        return task_loss

    def score(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        *,
        reference: nn.Module | None = None,
        limit: int | None = None,
    ) -> float:
        """The metric over a loader (or its first ``limit`` batches), in eval mode."""
        ref = self._reference(reference)
        model.eval()
        if ref is not None:
            ref.eval()
        total: torch.Tensor | None = None
        count = 0
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if limit is not None and i >= limit:
                    break
                x, y = split_batch(batch)
                ref_out = run_model(ref, x) if ref is not None else None
                stats, n = self.batch_stats(run_model(model, x), y, ref_out)
                total = stats if total is None else total + stats
                count += n
        if count == 0 or total is None:
            raise DataError("the evaluation split is empty")
        return self.finish(total, count)

    def batch_stats(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """What ``score`` sums over batches, and the batch's sample count (default: the sum of
        ``batch_metric``)."""
        s, n = self.batch_metric(out, target, ref_out)
        return torch.tensor(s, dtype=torch.float64), n

    def finish(self, total: torch.Tensor, count: int) -> float:
        """The metric from the summed ``batch_stats`` of a split (default: their mean)."""
        return float(total) / count

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class Classification(Task):
    """Class labels: cross-entropy loss, top-1 accuracy."""

    name: ClassVar[str] = "classification"
    metric: ClassVar[str] = "accuracy"

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> torch.Tensor:
        return F.cross_entropy(out, target)

    def batch_metric(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> tuple[float, int]:
        return float((out.argmax(dim=-1) == target).sum()), len(target)

    def distill_loss(
        self,
        out: torch.Tensor,
        teacher_out: torch.Tensor,
        target: torch.Tensor,
        *,
        alpha: float,
        temperature: float,
    ) -> torch.Tensor:
        """Hinton et al.: soft teacher targets at ``temperature`` mixed with the labels."""
        return kd_loss(out, teacher_out, target, alpha=alpha, temperature=temperature)

    def check_output(self, out: torch.Tensor, num_classes: int, where: str) -> None:
        if out.dim() != 2 or out.shape[1] < num_classes:
            raise DataError(
                f"{where} outputs shape {tuple(out.shape)} but the data has {num_classes} classes"
            )


class Embedding(Task):
    """Vectors compared with the original model's: cosine distance loss, ``cosine_mean``."""

    name: ClassVar[str] = "embedding"
    metric: ClassVar[str] = "cosine_mean"
    label: ClassVar[str] = "cosine mean"
    needs_reference: ClassVar[bool] = True

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> torch.Tensor:
        assert ref_out is not None
        return (1 - F.cosine_similarity(out, ref_out, dim=-1)).mean()

    def batch_metric(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> tuple[float, int]:
        assert ref_out is not None
        cos = F.cosine_similarity(out, ref_out, dim=-1)
        return float(cos.sum()), len(cos)

    def check_output(self, out: torch.Tensor, num_classes: int, where: str) -> None:
        if out.dim() != 2:
            raise DataError(f"{where} outputs shape {tuple(out.shape)}, not (batch, dim)")


class Regression(Task):
    """Real-valued targets ``[batch]`` or ``[batch, k]``: mean squared error loss, ``r2``.

    R^2 is not a mean over samples (its denominator is the split's spread): ``score`` sums
    per-batch statistics and ``finish`` computes it from the split's totals; with several
    outputs it is the mean of the outputs' R^2 (scikit-learn's ``uniform_average``).
    """

    name: ClassVar[str] = "regression"
    metric: ClassVar[str] = "r2"
    label: ClassVar[str] = "R^2"

    @staticmethod
    def _pair(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and targets as ``[batch, k]`` float, or a DataError naming both shapes."""
        pred = out.reshape(len(out), -1).float()
        true = target.reshape(len(target), -1).float()
        if pred.shape != true.shape:
            raise DataError(
                f"the model outputs shape {tuple(out.shape)} but the targets have shape "
                f"{tuple(target.shape)}: a regression model needs one output per target value"
            )
        return pred, true

    def loss(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> torch.Tensor:
        pred, true = self._pair(out, target)
        return F.mse_loss(pred, true)

    def distill_loss(
        self,
        out: torch.Tensor,
        teacher_out: torch.Tensor,
        target: torch.Tensor,
        *,
        alpha: float,
        temperature: float,
    ) -> torch.Tensor:
        """``alpha`` x MSE to the teacher's outputs + ``(1 - alpha)`` x MSE to the targets (no
        temperature: the outputs are values, not logits)."""
        pred, true = self._pair(out, target)
        teacher = teacher_out.reshape(pred.shape).float()
        return alpha * F.mse_loss(pred, teacher) + (1 - alpha) * F.mse_loss(pred, true)

    def check_output(self, out: torch.Tensor, num_classes: int, where: str) -> None:
        # (for regression data ``num_classes`` is the number of target values per sample)
        width = out.shape[1] if out.dim() == 2 else 1 if out.dim() == 1 else None
        if width != max(num_classes, 1):
            raise DataError(
                f"{where} outputs shape {tuple(out.shape)} but the data has "
                f"{max(num_classes, 1)} target value(s) per sample"
            )

    def batch_stats(
        self, out: torch.Tensor, target: torch.Tensor, ref_out: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """Per output: the summed squared error, sum of targets and of their squares."""
        pred, true = (t.double() for t in self._pair(out, target))
        return torch.stack([((pred - true) ** 2).sum(0), true.sum(0), (true**2).sum(0)]), len(true)

    def finish(self, total: torch.Tensor, count: int) -> float:
        sse, total_y, total_sq = total
        sst = total_sq - total_y**2 / count
        # a constant target (SST 0) scores 1 when predicted exactly, else 0 (as scikit-learn)
        r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), (sse == 0).double())
        return float(r2.mean())


CLASSIFICATION = Classification()
EMBEDDING = Embedding()
REGRESSION = Regression()

#: Tasks by name, for data that names its task (``DataBundle(task="embedding")``).
TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, EMBEDDING, REGRESSION)}


def metric_label(metric: str) -> str:
    """How reports name a task's metric key (``accuracy``, ``cosine_mean``, ``r2``)."""
    return {t.metric: t.label for t in TASKS.values()}.get(metric, metric)


def get_task(task: Task | str) -> Task:
    """A task object, or the task of that name; unknown names list the valid ones."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[task]
