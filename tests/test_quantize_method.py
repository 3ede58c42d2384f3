"""The ``quantize`` stage: weight grids, mixed precision, fine-tuning through them, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import modelzip as mz
from modelzip import mzip
from modelzip.context import Context
from modelzip.errors import ConfigError, DataError, ModelError, UnsupportedError
from modelzip.eval.evaluate import accuracy
from modelzip.nn.constraints import AffineQuant, constraints_of
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer


@pytest.fixture(scope="module")
def lenet300(digits):
    return mz.load_model("zoo:lenet300", data=digits)


def run_stage(model, data, method="quantize", inplace=False, **fields):
    cfg = get_method(method).config.parse(fields)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    model = model if inplace else copy.deepcopy(model)
    return get_method(method).apply(model, cfg, ctx), ctx.notes


def test_8bit_per_channel_keeps_accuracy_and_reports_errors(lenet300, digits):
    base = accuracy(lenet300, digits.test)
    model, notes = run_stage(lenet300, digits, bits=8)
    assert accuracy(model, digits.test) >= base - 0.01
    for name in ("fc1", "fc2", "fc3"):
        rec = notes["layers"][name]
        assert rec["bits"] == 8 and rec["sqnr_db"] > 35 and rec["mse"] > 0
        q = constraints_of(getattr(model, name), "weight")[-1]
        assert isinstance(q, AffineQuant) and q.axis == 0


def test_mixed_precision_map_and_file_round_trip(lenet300, digits):
    model, notes = run_stage(lenet300, digits, bits={"default": 4, "fc1": 8, "fc3": 8})
    assert {n: r["bits"] for n, r in notes["layers"].items()} == {"fc1": 8, "fc2": 4, "fc3": 8}
    assert notes["layers"]["fc2"]["sqnr_db"] < notes["layers"]["fc1"]["sqnr_db"]
    # every weight the model computes with is a code times its scale, stored bit for bit
    w2 = model.fc2.weight.detach()
    scale = w2.abs().amax(dim=1, keepdim=True) / 7
    assert torch.equal(torch.round(w2 / scale).abs().max(), torch.tensor(7.0))
    back, header = mzip.from_bytes(mzip.to_bytes(model))
    assert header["tensors"]["fc2.weight"]["kind"] == "affine"
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(back, name).weight, getattr(model, name).weight.detach())


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({"scheme": "asymmetric", "bits": 3}, 3),
        ({"granularity": "tensor", "bits": 5}, 5),
        ({"granularity": "group", "group_size": 4, "bits": 4}, 4),
    ],
)
def test_schemes_and_granularities_round_trip_exactly(lenet300, digits, fields, expect):
    model, notes = run_stage(lenet300, digits, **fields)
    assert notes["layers"]["fc1"]["bits"] == expect
    back, _ = mzip.from_bytes(mzip.to_bytes(model))
    x = digits.example(8)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_finetune_trains_through_the_grid_and_stays_on_it(lenet300, digits):
    model, _ = run_stage(lenet300, digits, bits=3, granularity="tensor")
    before = model.fc1.parametrizations.weight.original.detach().clone()
    acc_ptq = accuracy(model, digits.test)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    for step, (x, y) in enumerate(digits.train):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grad = model.fc1.parametrizations.weight.original.grad
        assert grad is not None and float(grad.abs().sum()) > 0  # straight-through
        opt.step()
        if step == 10:
            break
    assert not torch.equal(model.fc1.parametrizations.weight.original, before)
    w = model.fc1.weight.detach()
    assert len(torch.unique(w)) <= 7  # still 3-bit symmetric: at most 7 levels
    assert accuracy(model, digits.test) >= acc_ptq - 0.02


def test_bias_correction_removes_the_mean_output_error(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x_all = torch.cat([x for x, _ in digits.val])
    with torch.no_grad():
        ref = model(x_all)
    plain, _ = run_stage(model, digits, bits=2, granularity="tensor")
    fixed, notes = run_stage(model, digits, bits=2, granularity="tensor", bias_correction=True)
    with torch.no_grad():
        bias_plain = (plain(x_all) - ref).mean(0).abs().max()
        bias_fixed = (fixed(x_all) - ref).mean(0).abs().max()
    assert notes["layers"]["1"]["bias_correction"] > 0
    assert bias_fixed < 1e-4 < bias_plain


def test_recipe_shape_from_the_issue_parses():
    r = Recipe.from_yaml(
        "stages:\n  - method: quantize\n    bits: 8\n    granularity: channel\n"
        "    activations: {bits: 8, observer: mse}\n"
    )
    cfg = r.stages[0]
    assert cfg.activations.observer == "mse" and cfg.granularity == "channel"
    assert Recipe.from_dict(r.to_dict()).stages == r.stages


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"bits": 9}, r"bits.*must be one of 2, 3, 4, 5, 6, 7, 8, 16, got 9"),
        ({"bits": {"default": 1}}, r"got 1"),
        ({"granularity": "row"}, r"granularity"),
        ({"granularity": "group"}, r"needs group_size"),
        ({"group_size": 8}, r"needs granularity 'group'"),
        ({"activations": {"bits": 4}}, r"activation bits must be 8"),
        ({"activations": {"observer": "entropy"}}, r"minmax.*percentile.*mse.*kl"),
        ({"activations": {"bits": 8}, "granularity": "group", "group_size": 4}, r"int8 kernels"),
        ({"bitz": 8}, r"unknown field 'bitz'.*did you mean 'bits'"),
        (
            {"activations": {"bit": 8}},
            r"unknown field 'activations.bit'.*'bits'.*valid fields: bits, min_output_sqnr_db, "
            r"min_sqnr_db, mode, observer, percentile, rotate, rows, rows16_share, share_rows, "
            r"smoothquant, "
            r"static_margin_db, weight_rounding$",
        ),
    ],
)
def test_bad_config_is_one_clear_line(fields, match):
    with pytest.raises(ConfigError, match=match):
        get_method("quantize").config.parse(fields, where="stage 1")


def test_per_channel_on_a_layer_without_channels_is_an_error(digits):
    model = nn.Sequential(nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 10))
    with pytest.raises(UnsupportedError, match=r"1: granularity 'channel' needs .*tensor"):
        run_stage(model, digits, layers=["LayerNorm"])
    model, notes = run_stage(model, digits, layers=["LayerNorm"], granularity="tensor")
    assert notes["layers"]["1"]["bits"] == 8
    _, notes = run_stage(
        model, digits, layers=["LayerNorm", "Linear"], granularity="tensor", bias_correction=True
    )
    assert notes["bias_correction_skipped"] == {"1": "not a Linear or Conv layer"}
    assert notes["layers"]["2"]["bias_correction"] > 0


def test_unsigned_symmetric_grid_refuses_negative_weights(lenet300, digits):
    with pytest.raises(ConfigError, match=r"fc1: signed: false with scheme symmetric"):
        run_stage(lenet300, digits, signed=False)
    model, notes = run_stage(lenet300, digits, signed=False, scheme="asymmetric", bits=4)
    assert model.fc1.parametrizations.weight[0].signed is False
    assert notes["layers"]["fc1"]["sqnr_db"] > 10


def test_group_size_that_does_not_divide_is_an_error(lenet300, digits):
    model = copy.deepcopy(lenet300)
    with pytest.raises(ConfigError, match=r"fc2: group_size 32 does not divide its 300 inputs"):
        run_stage(model, digits, inplace=True, granularity="group", group_size=32)
    assert not parametrize.is_parametrized(model.fc1)  # fc1 (64 inputs) was left alone


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_not_quantized(lenet300, digits, bad):
    model = copy.deepcopy(lenet300)
    with torch.no_grad():
        model.fc2.weight[3, 5] = bad
    with pytest.raises(ModelError, match=r"fc2.weight has 1 NaN/inf value"):
        run_stage(model, digits, inplace=True)
    assert not parametrize.is_parametrized(model.fc1)  # nothing was changed


def test_calibration_without_data_is_an_error(lenet300, digits):
    cfg = get_method("quantize").config.parse({"activations": {"observer": "minmax"}})
    ctx = Context(data=None, trainer=Trainer(progress=False))
    with pytest.raises(DataError, match="activation calibration needs data"):
        get_method("quantize").apply(copy.deepcopy(lenet300), cfg, ctx)
    empty = copy.copy(digits)
    empty.loaders = {**digits.loaders, "val": []}
    with pytest.raises(DataError, match="val split of 'digits' is empty"):
        run_stage(lenet300, empty, activations={"observer": "minmax"})


def test_builtin_w8a8_recipe_is_listed_and_valid():
    r = Recipe.load("w8a8")
    assert r.stages[0].method == "fold_bn"
    q = r.stages[-1]
    assert q.activations.observer == "mse" and q.activations.mode == "auto" and q.bias_correction


def test_class_name_patterns_still_match_after_an_earlier_stage(lenet300, digits):
    pruned, _ = run_stage(lenet300, digits, method="prune", sparsity=0.5)
    model, notes = run_stage(pruned, digits, layers=["Linear"], bits=4)
    assert set(notes["layers"]) == {"fc1", "fc2", "fc3"}
    mask = model.fc1.parametrizations.weight[0].mask
    assert not bool(mask.all()) and bool((model.fc1.weight[~mask] == 0).all())  # mask holds
