"""The built-in w8a8 recipe on a user's residual CNN with BatchNorm (fixture), on digits."""

from __future__ import annotations

import copy

import onnxruntime as ort
import torch

import modelzip as mz
from modelzip.eval.evaluate import accuracy
from modelzip.export import export_onnx
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
    # its QDQ export takes ONNX Runtime's no-VNNI precision option (each weight's zero point
    # its own constant; the exporter had shared equal ones through Identity nodes)
    path = tmp_path / "r.onnx"
    export_onnx(back, path, example=x[:1])
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1")
    got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    with torch.inference_mode():
        assert (got.argmax(1) == back(x).numpy().argmax(1)).mean() >= 0.95
