import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelzip.eval.evaluate import accuracy, evaluate
from modelzip.eval.size import count_params, torch_save_bytes
from modelzip.nn.constraints import Mask, constrain
from modelzip.zoo.data import DataBundle


def _bundle(x, y):
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    return DataBundle(
        "hand", tuple(x.shape[1:]), 2, {s: loader for s in ("train", "val", "test")}, {}
    )


def test_numbers_match_a_hand_computed_case():
    # A 2-in, 2-out linear classifier: class = argmax(W x). W picks x0 vs x1.
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 0])  # third sample is wrong -> 4/5
    data = _bundle(x, y)
    assert accuracy(model, data.test) == pytest.approx(0.8)
    constrain(model[0], "weight", Mask(torch.tensor([[True, False], [False, True]])))
    m = evaluate(model, data, file_bytes=3, measure_latency=False)
    assert m["accuracy"] == pytest.approx(0.8)
    assert (m["params"], m["nonzero"], m["bytes"]) == (4, 2, 3)
    assert m["bits_per_weight"] == pytest.approx(6.0)  # 3 bytes * 8 / 4 weights
    assert m["sparsity"] == pytest.approx(0.5)


def test_baseline_bytes_are_the_torch_save_size(lenet300):
    buf = io.BytesIO()
    torch.save(lenet300.state_dict(), buf)
    assert abs(torch_save_bytes(lenet300) - buf.tell()) < 2048  # same tensors, same format
    assert count_params(lenet300) == (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,) * 2


def test_latency_is_reported_for_both_batches(lenet300, digits):
    m = evaluate(lenet300, digits, batch_n=32)
    assert m["latency_ms"]["N"] == 32
    assert m["latency_ms"]["b1"] > 0 and m["latency_ms"]["bN"] > 0
    assert 0.8 < m["accuracy"] <= 1.0
