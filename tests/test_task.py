"""One Task object (loss, metric, reference) for training, evaluation, scores and distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelzip.context import Context
from modelzip.errors import DataError
from modelzip.eval.evaluate import check_fits, evaluate
from modelzip.methods.distill import DistillConfig, distill
from modelzip.methods.prune import PruneConfig, prune
from modelzip.task import CLASSIFICATION, EMBEDDING, Embedding, get_task
from modelzip.train import Trainer
from modelzip.zoo.data import DataBundle


def _embedding_data() -> tuple[DataBundle, nn.Module]:
    torch.manual_seed(0)
    x = torch.randn(96, 6)
    idx = torch.arange(96) + 1000  # sentence indices: cross-entropy on them would fail
    loader = DataLoader(TensorDataset(x, idx), batch_size=16)
    data = DataBundle(
        "emb", (6,), 0, dict.fromkeys(("train", "val", "test"), loader), {}, EMBEDDING
    )
    teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    return data, teacher


def test_tasks_by_name_and_their_metrics():
    assert get_task("embedding") is EMBEDDING and get_task(CLASSIFICATION) is CLASSIFICATION
    assert DataBundle("d", (1,), 2, {}, {}, task="embedding").task == Embedding()
    assert get_task("regression").metric == "r2"
    with pytest.raises(DataError, match="valid tasks: classification, embedding, regression"):
        get_task("ranking")


def test_taylor_importance_uses_the_tasks_loss():
    """Taylor scores of an embedding model come from the cosine loss to the original model;
    cross-entropy on sentence indices would fail (the old behaviour)."""
    data, teacher = _embedding_data()
    student = copy.deepcopy(teacher)
    ctx = Context(data=data, trainer=Trainer(progress=False), teacher=teacher)
    cfg = PruneConfig(sparsity=0.5, criterion="taylor", scope="layer")
    out = prune(student, cfg, ctx)
    assert ctx.notes["layer_sparsity"] == {"0": 0.5, "2": 0.5}
    got = evaluate(out, data, measure_latency=False, reference=teacher)
    assert got["cosine_mean"] == got["accuracy"] and 0.5 < got["cosine_mean"] < 1.0


def test_distillation_reports_the_tasks_metric_for_an_embedding_teacher():
    data, teacher = _embedding_data()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ctx = Context(data=data, trainer=Trainer(progress=False), teacher=teacher)
    before = evaluate(student, data, measure_latency=False, reference=teacher)["cosine_mean"]
    out = distill(student, DistillConfig(epochs=10, lr=1e-2), ctx)
    assert "teacher_accuracy" not in ctx.notes
    assert ctx.notes["teacher_cosine_mean"] == pytest.approx(1.0)
    after = evaluate(out, data, measure_latency=False, reference=teacher)["cosine_mean"]
    assert after > before + 0.05 and after > 0.95


class TwoInputs(nn.Module):
    """A model that takes two tensors (image and a side feature)."""

    def __init__(self):
        super().__init__()
        self.img = nn.Linear(16, 16)
        self.side = nn.Linear(2, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, image: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.img(image.flatten(1)) + self.side(side)))


def test_batches_may_carry_several_inputs():
    torch.manual_seed(0)
    image, side = torch.randn(300, 4, 4), torch.randn(300, 2)
    y = ((image[:, 0, 0] > 0).long() + (side[:, 0] > 0).long()).clamp(max=2)
    loader = DataLoader(TensorDataset(image, side, y), batch_size=32)
    data = DataBundle("two", (4, 4), 3, dict.fromkeys(("train", "val", "test"), loader), {})
    model = TwoInputs()
    check_fits(model, data)
    assert isinstance(data.example_inputs(2), tuple)
    before = evaluate(model, data, measure_latency=False)["accuracy"]
    Trainer(progress=False).fit(model, data.train, epochs=15, lr=1e-2)
    after = evaluate(model, data, measure_latency=False)["accuracy"]
    assert after > 0.85 and after > before
    ctx = Context(data=data, trainer=Trainer(progress=False))
    pruned = prune(model, PruneConfig(sparsity={"default": 0.5, "role:last": 0.0}), ctx)
    assert ctx.notes["kept_dense"] == ["head"]  # roles found from a two-input forward pass
    assert evaluate(pruned, data, measure_latency=False)["accuracy"] > 0.7
