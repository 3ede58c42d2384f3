"""The built-in w8a8 recipe on a user's residual CNN with BatchNorm (fixture), on digits."""

from __future__ import annotations

import copy

import torch

import modelzip as mz
from modelzip.eval.evaluate import accuracy
from modelzip.nn.quantized import QuantConv2d
from modelzip.testing.user_models import residual_cnn
from modelzip.train import Trainer


def test_w8a8_folds_batchnorm_and_keeps_a_residual_cnns_accuracy(digits, tmp_path):
    model = residual_cnn()
    Trainer(progress=False).fit(model, digits.train, epochs=4, lr=3e-3)
    base = accuracy(model.eval(), digits.test)
    out = tmp_path / "r.mzip"
    result = mz.compress(copy.deepcopy(model), digits, "w8a8", out=out, measure_latency=False)
    q = result["model"]
    assert result["stages"][0]["notes"]["folded"]  # BatchNorm went into the convolutions
    assert isinstance(q.stem, QuantConv2d) and isinstance(q.down, QuantConv2d)
    assert accuracy(q, digits.test) >= base - 0.02
    back = mz.load(out, model=residual_cnn())
    x = digits.example(32)
    with torch.inference_mode():
        assert torch.equal(back(x), q(x))
