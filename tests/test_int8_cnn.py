"""The built-in w8a8 recipe on a user's residual CNN with BatchNorm (fixture), on digits."""

from __future__ import annotations

import copy

import onnxruntime as ort
import pytest
import torch

import modelzip as mz
from modelzip.context import Context
from modelzip.eval.evaluate import accuracy
from modelzip.export import export_onnx
from modelzip.nn.quantized import QuantConv2d, QuantLinear
from modelzip.registry import get_method
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


def _quantize(model, data, **acts):
    cfg = get_method("quantize").config.parse(
        {"bits": 8, "granularity": "channel", "activations": {"mode": "auto", **acts}}
    )
    ctx = Context(data=data, trainer=Trainer(progress=False))
    return get_method("quantize").apply(copy.deepcopy(model), cfg, ctx), ctx.notes


def test_output_guard_gives_float_inputs_back_while_the_model_is_too_far_from_float(digits):
    model = residual_cnn()
    Trainer(progress=False).fit(model, digits.train, epochs=2, lr=3e-3)
    model.eval()
    q, notes = _quantize(model, digits)
    plain = notes["output_sqnr_db"]
    assert "output_guard" not in notes and isinstance(q.stem, QuantConv2d)
    integer = [n for n, m in q.named_modules() if isinstance(m, QuantConv2d | QuantLinear)]

    # a floor no state reaches: at most half go back, the best state is kept and the miss said
    q, notes = _quantize(model, digits, min_output_sqnr_db=99)
    guard = notes["output_guard"]
    assert guard["before_db"] == pytest.approx(plain, abs=0.01)
    assert "floor_missed" in guard and guard["after_db"] > guard["before_db"]
    assert 1 <= len(guard["restored"]) <= len(integer) // 2
    kept = [n for n, m in q.named_modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert len(kept) == len(integer) - len(guard["restored"])
    for name in guard["restored"]:
        assert not isinstance(q.get_submodule(name), QuantConv2d | QuantLinear)
        assert "dB" in notes["float_activations"][name]
    most = len(guard["restored"])

    # a floor half way there: met, with no more layers back
    floor = (guard["before_db"] + guard["after_db"]) / 2
    q, notes = _quantize(model, digits, min_output_sqnr_db=floor)
    guard = notes["output_guard"]
    assert guard["after_db"] >= floor and "floor_missed" not in guard
    assert 1 <= len(guard["restored"]) <= most
    assert notes["output_sqnr_db"] >= floor - 0.3  # measured again after chaining
