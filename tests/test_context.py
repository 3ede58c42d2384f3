"""Every training stage goes through Context.fit, which picks the task's loss."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelzip.context import Context
from modelzip.train import Trainer
from modelzip.zoo.data import DataBundle


def test_embedding_models_train_towards_the_teacher_not_on_labels():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    idx = torch.arange(64)  # sentence indices, not classes: cross-entropy would fail on them
    loader = DataLoader(TensorDataset(x, idx), batch_size=16)
    data = DataBundle(
        "emb", (6,), 0, dict.fromkeys(("train", "val", "test"), loader), {}, task="embedding"
    )
    teacher = nn.Linear(6, 8).eval()
    student = nn.Linear(6, 8)
    ctx = Context(data=data, trainer=Trainer(progress=False), teacher=teacher)

    def distance() -> float:
        with torch.no_grad():
            return float(1 - nn.functional.cosine_similarity(student(x), teacher(x)).mean())

    before = distance()
    ctx.fit(student, epochs=30, lr=1e-2)
    assert distance() < 0.2 * before
