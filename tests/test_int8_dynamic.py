"""Dynamic per-token int8 Linear layers, SmoothQuant, per-layer mode choice, any rank."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.nn import int8_runtime
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.quantized import QuantLinear
from modelzip.registry import get_method
from modelzip.testing import int8_check
from modelzip.testing.user_models import write_tiny_bert
from modelzip.train import Trainer


def run_stage(model, data, **fields):
    cfg = get_method("quantize").config.parse(fields)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    return get_method("quantize").apply(copy.deepcopy(model), cfg, ctx), ctx.notes


@pytest.fixture(scope="module")
def english():
    return mz.load_data("english", batch_size=32)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = write_tiny_bert(tmp_path_factory.mktemp("tinybert"))
    return mz.load_model(str(folder))


def cosines(a: nn.Module, b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return nn.functional.cosine_similarity(a(x), b(x))


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_dynamic_linear_matches_its_integer_reference(kernel):
    layer, x, ref = int8_check.dynamic_case()
    if kernel == "reference":
        with int8_runtime.use("reference"):
            assert int8_check.dynamic_error(layer, x, ref) < 1e-5
    else:
        assert int8_check.dynamic_error(layer, x, ref) < 1e-5


def test_dynamic_linear_takes_any_rank_and_scales_each_row():
    torch.manual_seed(0)
    lin = nn.Linear(24, 8)
    q = DynQuantLinear.from_float(lin.weight, lin.bias)
    x = torch.randn(2, 3, 4, 24)
    x[0, 0, 0] *= 1000  # one outlier token must not coarsen the others' grid
    with torch.inference_mode():
        y4 = q(x)
        y2 = q(x.reshape(-1, 24)).reshape(2, 3, 4, 8)
        ref = lin(x)
    assert y4.shape == (2, 3, 4, 8) and torch.equal(y4, y2)
    rel = (y4 - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert float(rel.max()) < 0.03


def test_smoothquant_picks_an_alpha_that_tames_outlier_channels(english):
    from modelzip.quant import plan

    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    scale = torch.ones(32)
    scale[3] = 80.0  # an outlier input channel, as in transformer activations
    model = nn.Sequential(lin)
    batches = [torch.randn(64, 32) * scale for _ in range(4)]
    plans = plan.measure(model, {"0": lin}, batches)
    p = plans["0"]
    alpha, best = p.best_dynamic()
    assert alpha > 0 and best > p.sqnr(p.noise_dynamic[0.0]) + 3


def test_tiny_bert_dynamic_w8a8_keeps_embeddings_and_round_trips(tiny_bert, english, tmp_path):
    q, notes = run_stage(
        tiny_bert, english, activations={"mode": "dynamic"}, embeddings=True, bits=8
    )
    linears = [m for m in q.modules() if isinstance(m, DynQuantLinear)]
    assert len(linears) == 13 and not any(type(m) is nn.Linear for m in q.modules())
    assert notes["embeddings"]["encoder.embeddings.word_embeddings"]["bits"] == 8
    x = english.example(32)
    assert float(cosines(tiny_bert, q, x).min()) > 0.999
    path = tmp_path / "tb.mzip"
    mz.save(q, path)
    back = mz.load(path)
    with torch.inference_mode():
        assert torch.equal(back(x), q(x))
    assert path.stat().st_size < 0.3 * sum(p.numel() * 4 for p in tiny_bert.parameters())


def test_bias_correction_on_three_dimensional_activations(tiny_bert, english):
    # used to crash: correct_biases assumed channels on dim 1 ([batch, tokens, features] here)
    q, notes = run_stage(tiny_bert, english, activations={"mode": "static"}, bias_correction=True)
    assert isinstance(q.encoder.encoder.layer[0].attention.self.query, QuantLinear)
    assert "bias_correction" in notes["layers"]["encoder.encoder.layer.0.attention.self.query"]
    assert float(cosines(tiny_bert, q, english.example(32)).mean()) > 0.99


def test_auto_mode_keeps_cnns_static_and_chained(digits):
    lenet = mz.load_model("zoo:lenet5", data=digits)
    q, notes = run_stage(lenet, digits, activations={"mode": "auto"}, bias_correction=True)
    assert notes["layers"]["fc1"]["mode"] == "static" and isinstance(q.fc1, QuantLinear)
    assert notes["chained"] == ["conv1->conv2", "conv2->fc1", "fc1->fc2"]


def test_layers_too_inexact_for_int8_stay_float_with_the_reason(tiny_bert, english):
    q, notes = run_stage(tiny_bert, english, activations={"mode": "dynamic", "min_sqnr_db": 99})
    assert len(notes["kept_float"]) == 13
    reason = next(iter(notes["kept_float"].values()))
    assert "below min_sqnr_db 99" in reason
    assert type(q.encoder.pooler.dense) is nn.Linear


@pytest.mark.parametrize("dead", [1, 40], ids=["one-unseen", "most-unseen"])
@pytest.mark.parametrize("floor", [0.1, 0.0], ids=["floored", "unfloored"])
def test_a_feature_calibration_never_saw_does_not_swamp_its_row(floor, dead, monkeypatch):
    # ReLU inputs: feature 0 is off in every calibration row and on in a later one. SmoothQuant
    # from its zero range alone would multiply it by thousands and round the rest of the row
    # to zero; the floor (dynamic.UNSEEN_FLOOR) treats it as an ordinary feature instead. With
    # most features unseen (dead ReLU units) the median of all ranges is 0: the floor is taken
    # from the features calibration did see (a diamonds-price MLP lost 1.9 points of R^2).
    from modelzip.nn import dynamic

    monkeypatch.setattr(dynamic, "UNSEEN_FLOOR", floor)
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 16)
    calib = torch.rand(512, 64, generator=g) * 3
    calib[:, :dead] = 0.0
    smooth = dynamic.smooth_factors(calib.abs().amax(0), lin.weight, 0.75)
    q = DynQuantLinear.from_float(lin.weight, lin.bias, smooth)
    x = torch.rand(8, 64, generator=g) * 3
    x[:, 0] = 2.0  # switched on, at an ordinary magnitude
    with torch.inference_mode():
        want, got = lin(x), q(x)
    rel = float((got - want).norm() / want.norm())
    if floor:  # the feature is at most a few times the others: a few percent of error
        assert rel < 0.05
    else:  # the control, what the floor prevents: the row's other features round to zero
        assert rel > 0.5
