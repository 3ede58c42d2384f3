"""Low-rank factorization: SVD math, rank rules, the lowrank stage, .mzip round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.methods.lowrank import LowrankConfig, lowrank
from modelzip.nn.lowrank import LowRankConv2d, LowRankLinear
from modelzip.nn.quantized import QuantConv2d, QuantLinear, _QuantBase
from modelzip.ops import lowrank as lr
from modelzip.source import ModelSource
from modelzip.testing import user_models as um
from modelzip.train import Trainer


def _zoo(name: str, data, **kwargs) -> nn.Module:
    kw = {"in_shape": list(data.sample_shape), "num_classes": data.num_classes, **kwargs}
    return ModelSource("zoo", name, kw).build()


@pytest.fixture(scope="module")
def lenet300(digits):
    torch.manual_seed(0)
    model = _zoo("lenet300", digits)
    Trainer(progress=False).fit(model, digits.train, epochs=8, lr=3e-3)
    return model.eval()


def _ctx(data) -> Context:
    return Context(data=data, trainer=Trainer(progress=False))


def _apply(model: nn.Module, data, **fields) -> tuple[nn.Module, dict]:
    ctx = _ctx(data)
    out = lowrank(model, LowrankConfig.parse(fields), ctx)
    return out, ctx.notes


# --------------------------------------------------------------------------- pure math


def test_full_rank_linear_reproduces_the_layer():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    x = torch.randn(16, 30)
    fact = LowRankLinear.from_linear(layer, rank=20)
    torch.testing.assert_close(fact(x), layer(x), atol=1e-5, rtol=1e-5)


def test_full_rank_conv_reproduces_the_layer():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    x = torch.randn(4, 3, 9, 9)
    fact = LowRankConv2d.from_conv(layer, rank=8)  # 8 = min(8, 3*3*3)
    assert fact(x).shape == layer(x).shape
    torch.testing.assert_close(fact(x), layer(x), atol=1e-5, rtol=1e-5)


def test_truncation_error_is_the_dropped_energy():
    # Eckart-Young: the squared Frobenius error of the best rank-r factors is sum_{i>r} s_i^2.
    torch.manual_seed(1)
    w = torch.randn(40, 25, dtype=torch.float64)
    s = lr.singular_values(w)
    for r in (1, 5, 24):
        a, b = lr.svd_factors(w, r)
        err = float(((w - a @ b) ** 2).sum())
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(2, 30),
    n=st.integers(2, 30),
    energy=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_rank_by_energy_keeps_the_requested_energy(m, n, energy, seed):
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    s = lr.singular_values(w)
    r = lr.rank_for_energy(s, energy)
    assert 1 <= r <= min(m, n)
    assert lr.energy_kept(s, r) >= energy - 1e-9
    if r > 1:  # and it is the smallest such rank
        assert lr.energy_kept(s, r - 1) < energy


@given(m=st.integers(2, 400), n=st.integers(2, 400), ratio=st.floats(0.01, 0.99))
def test_rank_by_ratio_stays_within_the_budget(m, n, ratio):
    r = lr.rank_for_ratio(m, n, ratio)
    assert r == 1 or lr.factored_params(m, n, r) <= ratio * m * n
    assert lr.factored_params(m, n, r + 1) > ratio * m * n or r == min(m, n)


def test_global_allocation_respects_budget_and_favours_concentrated_energy():
    torch.manual_seed(0)
    shapes = {"flat": (50, 50), "peaked": (50, 50)}
    spectra = {"flat": torch.ones(50), "peaked": torch.tensor([10.0] * 5 + [0.01] * 45)}
    budget = 20 * 100
    ranks = lr.allocate_ranks(shapes, spectra, budget)
    assert sum(lr.factored_params(*shapes[k], r) for k, r in ranks.items()) <= budget
    assert ranks["peaked"] == 5  # its energy is all in 5 values; the rest goes to 'flat'
    assert ranks["flat"] == 15


# --------------------------------------------------------------------------- the stage


def test_lowrank_stage_factorizes_and_reports(digits, lenet300):
    out, notes = _apply(_copy(lenet300), digits, energy=0.9)
    assert isinstance(out.fc1, LowRankLinear)
    for name, rec in notes["layers"].items():
        assert rec["energy_kept"] >= 0.9
        assert rec["params_after"] < rec["params_before"], name


def test_ratio_reduces_parameters_per_layer(digits, lenet300):
    model = _copy(lenet300)
    out, notes = _apply(model, digits, ratio=0.25, scope="layer")
    for rec in notes["layers"].values():
        assert rec["params_after"] <= 0.25 * rec["params_before"] or rec["rank"] == 1
    dense = sum(p.numel() for p in lenet300.parameters())
    assert sum(p.numel() for p in out.parameters()) < 0.3 * dense


def test_one_ratio_is_a_global_budget_by_default(digits, lenet300):
    _, notes = _apply(_copy(lenet300), digits, ratio=0.5)
    assert notes["scope"] == "global"
    # the 10-class head is not cut to half its rank as a per-layer ratio would
    assert notes["layers"].get("fc3", {"rank": 10})["rank"] > 5
    _, notes = _apply(_copy(lenet300), digits, ratio={"default": 0.5, "role:last": 0.9})
    assert notes["scope"] == "layer"


def test_global_scope_hits_the_budget_and_keeps_accuracy(digits, lenet300):
    base = mz.evaluate(lenet300, digits, measure_latency=False)["accuracy"]
    out, notes = _apply(_copy(lenet300), digits, ratio=0.25, scope="global")
    kept = sum(r["params_after"] for r in notes["layers"].values())
    dense = sum(r["params_before"] for r in notes["layers"].values())
    assert kept <= 0.25 * dense
    acc = mz.evaluate(out, digits, measure_latency=False)["accuracy"]
    assert acc > base - 0.1  # energy-aware ranks keep most of the accuracy before any training


def test_layers_where_factoring_does_not_pay_are_skipped_with_a_reason(digits):
    out, notes = _apply(_zoo("lenet5", digits), digits, ratio=0.8, scope="layer")
    assert all(r["params_after"] < 0.9 * r["params_before"] for r in notes["layers"].values())
    assert isinstance(out.conv2, LowRankConv2d)
    _, notes = _apply(_zoo("lenet5", digits), digits, energy=1.0, min_saving=0)
    assert "conv1" in notes["skipped"] and "saves 0.0%" not in notes["skipped"]["conv1"]
    assert "ranks below 11.1 pay" in notes["skipped"]["conv1"]  # 20x25: r * 45 < 500
    _, notes = _apply(_zoo("lenet5", digits), digits, ratio=0.95, scope="layer")  # < 10%: dense
    assert "below min_saving 10%" in notes["skipped"]["conv2"]
    model = _zoo("lenet5", digits)
    _, notes = _apply(model, digits, ratio=0.25, scope="global")
    assert "conv1" in notes["skipped"]  # its spectrum is flat: the budget goes elsewhere
    factored = sum(r["params_after"] for r in notes["layers"].values())
    dense_kept = sum(m.weight.numel() for n, m in model.named_modules() if n in notes["skipped"])
    total = sum(m.weight.numel() for m in _zoo("lenet5", digits).modules() if hasattr(m, "weight"))
    assert factored + dense_kept <= 0.25 * total + 1


def test_unsupported_and_already_factorized_layers_are_reported(digits):
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(24, 10))
    _, notes = _apply(model, digits, rank={"default": 2})
    assert "Conv1d" in notes["skipped"]["0"]
    _, notes = _apply(model, digits, rank=1)
    assert notes["skipped"]["2.first"] == "already a low-rank factor"


def test_rank_larger_than_the_matrix_is_a_clear_error(digits, lenet300):
    with pytest.raises(ConfigError, match=r"rank = 50 for layer 'fc3'.*10x100.*max rank 10"):
        _apply(_copy(lenet300), digits, rank={"default": 5, "fc3": 50})


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": 0.5, "energy": 0.9}, "only one of ratio, energy, rank"),
        ({"energy": 0}, "energy"),
        ({"rank": 0}, "rank"),
        ({"energy": 0.9, "scope": "global"}, "global"),
        ({"ratoi": 0.5}, "did you mean 'ratio'"),
    ],
)
def test_bad_config_is_a_clear_error(fields, match):
    with pytest.raises(ConfigError, match=match):
        LowrankConfig.parse(fields)


def test_bad_layer_pattern_lists_the_layers(digits, lenet300):
    with pytest.raises(ConfigError, match="fc1, fc2, fc3"):
        _apply(_copy(lenet300), digits, layers=["fc9"])


def test_factorized_model_round_trips_through_mzip(digits, lenet300, tmp_path: Path):
    out, _ = _apply(_copy(lenet300), digits, ratio=0.3)
    lenet5, _ = _apply(_zoo("lenet5", digits), digits, ratio=0.4)
    for model in (out, lenet5):
        path = tmp_path / "m.mzip"
        mz.save(model, path)
        back = mz.load(path)
        x = digits.example(32)
        with torch.no_grad():
            assert torch.equal(back(x), model.eval()(x))
        assert type(back.fc1) is type(model.fc1)
    # A fresh process that only loads the file must know the replacement modules too.
    code = (
        "import sys, modelzip as mz; m = mz.load(sys.argv[1]); "
        "print(type(m.fc1).__name__, m.fc1.rank)"
    )
    path = tmp_path / "fresh.mzip"
    mz.save(out, path)
    res = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert res.stdout.split() == ["LowRankLinear", str(out.fc1.rank)]


def _copy(model: nn.Module) -> nn.Module:
    clone = ModelSource.from_json(model.modelzip_source.to_json()).build()
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def test_factors_are_ordinary_layers_for_later_stages(digits, lenet300, tmp_path: Path):
    # Pruning and quantization see the two factors as Linear layers and keep their constraints
    # through the .mzip.
    recipe = mz.Recipe.from_dict(
        [
            {"method": "lowrank", "ratio": 0.5, "scope": "global"},
            {"method": "prune", "sparsity": 0.5},
            {"method": "quantize", "bits": 8},
        ]
    )
    result = mz.compress(_copy(lenet300), digits, recipe, out=tmp_path / "q.mzip")
    factored = list(result["stages"][0]["notes"]["layers"])
    assert factored
    prune_notes = result["stages"][1]["notes"]["layer_sparsity"]
    assert {f"{n}.{part}" for n in factored for part in ("first", "second")} <= set(prune_notes)
    back = mz.load(tmp_path / "q.mzip")
    assert all(isinstance(back.get_submodule(n), LowRankLinear) for n in factored)
    x = digits.example(16)
    with torch.no_grad():
        assert torch.equal(back(x), result["model"](x))
    assert result["compressed"]["accuracy"] > 0.8


#: Channel pruning, then factorization (with the fine-tuning it needs: on the pruned residual
#: CNN a rank cut to 0.8 alone left 40% accuracy), then W8A8: the factors become integer-kernel
#: layers.
PRUNE_LOWRANK_W8A8 = [
    {"method": "prune", "pattern": "channel", "sparsity": 0.5},
    {"method": "finetune", "epochs": 2, "lr": 3e-3},
    {"method": "lowrank", "ratio": 0.8},
    {"method": "finetune", "epochs": 1, "lr": 1e-3},
    {"method": "quantize", "bits": 8, "activations": {"bits": 8}},
]


@pytest.mark.parametrize(
    ("name", "int8_kind"), [("lenet5", QuantLinear), ("residual_cnn", QuantConv2d)]
)
def test_channel_prune_lowrank_w8a8_round_trips(digits, name, int8_kind, tmp_path: Path):
    # Regression: W8A8 turns low-rank factors into QuantConv2d / QuantLinear; saving crashed in
    # LowRankConv2d.to_spec, and the loader rebuilt the factors as float layers.
    torch.manual_seed(0)
    if name == "lenet5":
        model, skeleton = _zoo("lenet5", digits), None
    else:
        model, skeleton = um.residual_cnn(), um.residual_cnn
    Trainer(progress=False).fit(model, digits.train, epochs=4, lr=3e-3)
    recipe = mz.Recipe.from_dict(PRUNE_LOWRANK_W8A8)
    out = tmp_path / "c.mzip"
    result = mz.compress(model.eval(), digits, recipe, out=out, measure_latency=False)
    small = result["model"]
    int8_factors = {
        n: (type(m.first), type(m.second))
        for n, m in small.named_modules()
        if isinstance(m, LowRankLinear | LowRankConv2d) and isinstance(m.first, _QuantBase)
    }
    assert int8_kind in {first for first, _ in int8_factors.values()}  # what this test is about
    back = mz.load(out, model=skeleton() if skeleton else None)
    assert {
        n: (type(back.get_submodule(n).first), type(back.get_submodule(n).second))
        for n in int8_factors
    } == int8_factors
    x = digits.example(32)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
    factored, int8 = result["stages"][-2]["accuracy"], result["stages"][-1]["accuracy"]
    assert factored > 0.5 and int8 >= factored - 0.03  # int8 factors compute what they replace


def test_ratio_one_keeps_a_layer_dense_where_ratio_point_nine_did_not(digits, lenet300):
    # the built-in recipe's head rule: 0.9 still cut the 10 x 100 head to rank 8 of 10
    _, notes = _apply(_copy(lenet300), digits, ratio={"default": 0.25, "role:last": 0.9})
    assert notes["layers"]["fc3"]["rank"] == 8
    out, notes = _apply(_copy(lenet300), digits, ratio={"default": 0.25, "role:last": 1})
    assert type(out.fc3) is nn.Linear and notes["skipped"]["fc3"] == "ratio 1: kept dense"
    assert isinstance(out.fc1, LowRankLinear)
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\]"):
        LowrankConfig.parse({"ratio": 1.5})


def test_builtin_lowrank_distill_keeps_small_layers_and_the_head_dense(digits, caplog):
    recipe = mz.Recipe.load("lowrank-distill")
    model = um.concat_net()  # every layer under 10,000 parameters
    ctx = _ctx(digits)
    with caplog.at_level("WARNING", logger="modelzip"):
        out = lowrank(model, recipe.stages[0], ctx)
    assert ctx.notes["layers"] == {}
    skipped = ctx.notes["skipped"]
    assert len(skipped) > 3 and set(skipped.values()) <= {"ratio 1: kept dense"}
    assert not any(isinstance(m, LowRankLinear | LowRankConv2d) for m in out.modules())
    # the warning gives each reason once, with the layers (not the reason once per layer)
    (warning,) = [r.getMessage() for r in caplog.records if "no layer was factorized" in r.msg]
    assert warning.count("ratio 1: kept dense") == 1
    assert f"and {len(skipped) - 3} more" in warning and next(iter(skipped)) in warning
