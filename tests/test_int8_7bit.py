"""7-bit weights (``bits: 7`` with activations): int8 kernels that cannot saturate on any CPU.

Without VNNI, PyTorch's engine and ONNX Runtime pair uint8 x int8 products in int16; with weight
codes within ``int8_runtime.PAIR_SAFE`` (64) a pair stays below 2 * 255 * 64 = 32,640, so the
fast kernels are exact there too. These tests hold on every CPU; on one without VNNI (an
AVX2-only AMD EPYC) they are the real check, and the 8-bit controls show what they would catch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelzip as mz
from modelzip.eval.evaluate import accuracy
from modelzip.export import export_onnx, ort_kernels_saturate, ort_session
from modelzip.nn import int8_runtime
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.quantized import QuantConv2d, QuantLinear
from modelzip.recipe import Recipe
from modelzip.testing import int8_check
from modelzip.testing.user_models import residual_cnn, write_tiny_bert
from modelzip.train import Trainer


def w8a8_7bit() -> Recipe:
    """The built-in w7a8 recipe: w8a8 with 7-bit weights."""
    rec = Recipe.load("w7a8")
    w8a8 = Recipe.load("w8a8")
    assert rec.stages[-1].bits == 7 and w8a8.stages[-1].bits == 8
    assert rec.stages[-1].activations == w8a8.stages[-1].activations  # nothing else differs
    return rec


@pytest.mark.parametrize("make", [int8_check.linear_case, int8_check.conv_case])
def test_seven_bit_weights_run_the_engine_exactly_on_every_cpu(make, monkeypatch):
    monkeypatch.delenv("MODELZIP_INT8_KERNELS", raising=False)
    case = make(wmax=int8_runtime.PAIR_SAFE)
    assert case.layer.uses_engine()  # on this CPU, VNNI or not
    assert int8_check.error_steps(case) <= 0.5 + 1e-3  # one rounding to the output grid
    # full-range weights use the engine only where it is exact; the error bound holds alike
    wide = make()
    assert wide.layer.uses_engine() == int8_runtime.kernels().exact_engine
    assert int8_check.error_steps(wide) <= 0.5 + 1e-3


def test_a_forced_choice_holds_for_seven_bit_layers_too(monkeypatch):
    case = int8_check.linear_case(wmax=int8_runtime.PAIR_SAFE)
    with int8_runtime.use("reference"):
        assert not case.layer.uses_engine()
        assert int8_check.error_steps(case) <= 0.5 + 1e-3
    assert int8_runtime.engine_exact_for(int8_runtime.PAIR_SAFE + 1) == (
        int8_runtime.kernels().exact_engine
    )


def test_seven_bit_dynamic_layer_codes_and_plain_onnx_runtime_agree(tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    x = torch.randn(4, 8, 256)
    x[..., ::5] *= 30.0  # outlier features: row codes near +-127, where int16 pairs overflow
    for bits in (7, 8):
        q = DynQuantLinear.from_float(lin.weight, lin.bias, weight_bits=bits)
        assert int(q.qweight.abs().max()) == 2 ** (bits - 1) - 1
        path = tmp_path / f"l{bits}.onnx"
        export_onnx(torch.nn.Sequential(q), path, example=x[:1], check=False)
        with torch.inference_mode():
            want = q(x).numpy()
        plain = ort_session(path, precise=False).run(None, {"input": x.numpy()})[0]
        err = float(np.abs(plain - want).max() / np.abs(want).max())
        if bits == 7:  # ORT's default session: exact on every CPU
            assert err < 1e-5
        elif ort_kernels_saturate():  # the control: 8-bit weights saturate here without VNNI
            assert err > 1e-3
    with pytest.raises(ValueError, match="weight_bits must be 7 or 8"):
        DynQuantLinear.from_float(lin.weight, lin.bias, weight_bits=6)


def test_w8a8_with_seven_bit_weights_on_a_tiny_bert_exports_for_any_ort_session(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    data = mz.load_data("english", batch_size=32)
    fp32 = mz.load_model(str(folder))
    res = mz.compress(fp32, data, w8a8_7bit(), out=tmp_path / "q.mzip", measure_latency=False)
    q = mz.load(tmp_path / "q.mzip")
    int8 = [m for m in q.modules() if isinstance(m, DynQuantLinear | QuantLinear)]
    assert len(int8) >= 12 and all(int(m.qweight.abs().max()) <= 63 for m in int8)
    assert sum(isinstance(m, DynQuantLinear) for m in int8) >= 6
    notes = res["stages"][-1]["notes"]["layers"]
    assert {info["bits"] for info in notes.values() if info.get("int8_kernel")} == {7}
    x = data.example(32)
    with torch.inference_mode():
        ref, got = fp32(x), q(x)
    assert float(torch.nn.functional.cosine_similarity(ref, got).mean()) > 0.995
    path = tmp_path / "q.onnx"
    assert export_onnx(q, path, example=data.example(1))["exact_without_vnni"] is True
    plain = ort_session(path, precise=False).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(plain - got.numpy()).max()) < 1e-4  # no precision option needed


def test_a_seven_bit_static_cnn_runs_the_engine_and_plain_ort_agrees(digits, tmp_path):
    torch.manual_seed(0)
    net = residual_cnn()
    Trainer(progress=False).fit(net, digits.train, epochs=4, lr=3e-3)
    base = accuracy(net.eval(), digits.test)
    mz.compress(net, digits, w8a8_7bit(), out=tmp_path / "c.mzip", measure_latency=False)
    q = mz.load(tmp_path / "c.mzip", model=residual_cnn())
    static = [m for m in q.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert static and all(int(m.qweight.abs().max()) <= 63 for m in static)
    assert all(m.uses_engine() for m in static)  # int8 speed without VNNI too
    assert accuracy(q, digits.test) >= base - 0.02
    path = tmp_path / "c.onnx"
    x = digits.example(64)
    assert export_onnx(q, path, example=x[:1])["exact_without_vnni"] is True
    with torch.inference_mode():
        want = q(x).numpy()
    plain = ort_session(path, precise=False).run(None, {"input": x.numpy()})[0]
    assert (plain.argmax(1) == want.argmax(1)).mean() >= 0.98
