"""W8A8 static PTQ and QAT: real int8 layers, .mzip round trip, calibration, STE/LSQ."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.context import Context
from modelzip.eval.evaluate import accuracy
from modelzip.nn.fakequant import ActQuant, LearnedAffineQuant, attach_input_quant
from modelzip.nn.quantized import QuantConv2d, QuantLinear
from modelzip.ops import affine
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer


@pytest.fixture(scope="module")
def lenet5(digits):
    return mz.load_model("zoo:lenet5", data=digits)


def run_stage(model, data, method="quantize", **fields):
    cfg = get_method(method).config.parse(fields)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    return get_method(method).apply(copy.deepcopy(model), cfg, ctx), ctx.notes


@pytest.fixture(scope="module")
def w8a8(lenet5, digits):
    return run_stage(lenet5, digits, activations={"observer": "mse"}, bias_correction=True)


def test_w8a8_replaces_layers_with_int8_kernels_and_keeps_accuracy(lenet5, digits, w8a8):
    model, notes = w8a8
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.conv2, QuantConv2d)
    assert isinstance(model.fc1, QuantLinear) and isinstance(model.fc2, QuantLinear)
    assert model.fc1.qweight.dtype == torch.int8 and model.fc1.w_scale.shape == (
        model.fc1.out_features,
    )
    assert model.conv2.w_scale.shape == (50,)
    # uint8 tensors flow layer to layer; only the last layer returns float
    assert notes["chained"] == ["conv1->conv2", "conv2->fc1", "fc1->fc2"]
    assert [m.out_float for m in (model.conv1, model.conv2, model.fc1, model.fc2)] == [
        False,
        False,
        False,
        True,
    ]
    with torch.inference_mode():
        y = model.conv1(digits.example(4))
    assert y.is_quantized and y.dtype == torch.quint8
    assert notes["output_sqnr_db"] > 20
    assert accuracy(model, digits.test) >= accuracy(lenet5, digits.test) - 0.01
    assert notes["layers"]["conv1"]["act_zero_point"] == 0  # inputs >= 0: zero point at 0


def test_w8a8_file_round_trip_gives_identical_outputs(w8a8, digits):
    model, _ = w8a8
    blob = mzip.to_bytes(model)
    back, header = mzip.from_bytes(blob)
    assert isinstance(back.fc1, QuantLinear) and back.fc1.out_float is False
    assert header["tensors"]["fc1.qweight"]["fields"]["values"]["codec"]
    x = torch.cat([digits.example(64), digits.example(64)])
    with torch.inference_mode():
        assert torch.equal(back(x), model(x))
    for name, buf in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], buf), name
    # counting sees the dequantized weights; the file stores int8
    assert mz.evaluate(back, digits, measure_latency=False)["params"] == sum(
        p.numel() for p in mz.load_model("zoo:lenet5", data=digits).parameters()
    )
    assert len(blob) < 0.35 * sum(4 * t.numel() for t in model.state_dict().values())


def test_compress_and_evaluate_of_the_file_agree(lenet5, digits, tmp_path):
    recipe = tmp_path / "w8a8.yaml"
    recipe.write_text(
        "stages:\n  - method: quantize\n    bits: 8\n    granularity: channel\n"
        "    activations: {bits: 8, observer: minmax}\n"
    )
    out = tmp_path / "m.mzip"
    result = mz.compress(copy.deepcopy(lenet5), digits, str(recipe), out=out, measure_latency=False)
    again = mz.evaluate(str(out), digits, measure_latency=False)
    assert again["accuracy"] == result["compressed"]["accuracy"]
    assert again["bytes"] == out.stat().st_size == result["compressed"]["bytes"]
    assert result["ratio"] > 3.0


def test_layers_without_int8_kernels_are_reported_not_skipped_silently(digits):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    q, notes = run_stage(model, digits, activations={"observer": "minmax"})
    assert "padding='same'" in notes["float_activations"]["0"]
    assert isinstance(q[3], QuantLinear) and not isinstance(q[0], QuantConv2d)
    assert notes["layers"]["0"]["bits"] == 8  # its weights are still quantized


def test_int8_linear_matches_its_fake_quant_reference():
    torch.manual_seed(0)
    w, b, x = torch.randn(16, 32) * 0.1, torch.randn(16) * 0.1, torch.rand(8, 32)
    s_w = w.abs().amax(1) / 127
    codes = torch.round(w / s_w[:, None])
    layer = QuantLinear(32, 16)
    layer.set_weight(codes, s_w, torch.zeros(16))
    layer.bias.copy_(b)
    s_x = 1 / 255
    ref = nn.functional.linear(torch.round(x / s_x) * s_x, codes * s_w[:, None], b)
    lo, hi = float(ref.min()), float(ref.max())
    s_y, zp_y = affine.qparams_from_range(torch.tensor(lo), torch.tensor(hi), 8, symmetric=False)
    layer.set_qparams((s_x, 0), (float(s_y), int(zp_y)))
    with torch.inference_mode():
        out = layer(x)
    assert not out.is_quantized
    assert float((out - ref).abs().max()) <= float(s_y) / 2 + 1e-3  # one output rounding


def test_qat_gradients_flow_through_weights_activations_and_step_sizes():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    from modelzip.nn.constraints import constrain

    constrain(lin, "weight", LearnedAffineQuant(4, lin.weight.detach(), axis=0))
    attach_input_quant(lin, ActQuant(0.0, 1.0, learned=True))
    x = torch.rand(16, 8, requires_grad=True)
    lin(x).pow(2).sum().backward()
    assert float(lin.parametrizations.weight.original.grad.abs().sum()) > 0
    assert float(lin.parametrizations.weight[0].scale.grad.abs().sum()) > 0
    assert lin.input_quant.scale.grad is not None and float(x.grad.abs().sum()) > 0
    names = {n for n, _ in lin.named_parameters()}
    assert {"input_quant.scale", "parametrizations.weight.0.scale"} <= names


@pytest.mark.parametrize("lsq", [False, True])
def test_qat_stage_trains_then_converts_to_int8(digits, lsq):
    lenet = mz.load_model("zoo:lenet300", data=digits)
    model, notes = run_stage(lenet, digits, method="qat", bits=4, epochs=1, lr=1e-4, lsq=lsq)
    assert isinstance(model.fc1, QuantLinear) and isinstance(model.fc3, QuantLinear)
    assert notes["chained"] == ["fc1->fc2", "fc2->fc3"] and notes["lsq"] is lsq
    assert int(model.fc2.qweight.abs().max()) <= 7  # 4-bit codes in int8 storage
    assert accuracy(model, digits.test) >= accuracy(lenet, digits.test) - 0.03
    back, _ = mzip.from_bytes(mzip.to_bytes(model))
    x = digits.example(32)
    with torch.inference_mode():
        assert torch.equal(back(x), model(x))


def test_qat_recipe_rejects_bits_the_kernels_cannot_run():
    with pytest.raises(mz.ModelzipError, match="qat converts to int8 kernels: bits must be 2..8"):
        Recipe.from_dict({"stages": [{"method": "qat", "bits": 16}]})


def test_a_fresh_process_loads_the_int8_model(w8a8, tmp_path):
    import os
    import subprocess
    import sys

    model, _ = w8a8
    path = tmp_path / "w8a8.mzip"
    mzip.save(model, path)
    code = (
        "import sys; from modelzip import mzip; "
        "m, _ = mzip.load(sys.argv[1]); print(type(m.fc1).__name__)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "QuantLinear"


def test_hostile_int8_layer_specs_are_refused_before_allocating():
    from modelzip.errors import FormatError
    from modelzip.nn.registry import MODULE_TYPES
    from modelzip.nn.specs import build

    huge = {"in_features": 1 << 20, "out_features": 1 << 20, "bias": True, "out_float": True}
    with pytest.raises(FormatError, match="bad weight shape"):
        build({"type": "QuantLinear", "args": huge}, MODULE_TYPES)
    with pytest.raises(FormatError, match="cannot build QuantConv2d"):
        build(
            {
                "type": "QuantConv2d",
                "args": {"in_channels": -1, "out_channels": 2, "kernel_size": [3, 3]},
            },
            MODULE_TYPES,
        )


def test_pruned_then_w8a8_keeps_the_zeros_in_the_int8_codes(digits):
    lenet = mz.load_model("zoo:lenet300", data=digits)
    recipe = mz.Recipe.from_dict(
        {
            "stages": [
                {"method": "prune", "sparsity": 0.8},
                {"method": "quantize", "activations": {"observer": "percentile"}},
            ]
        }
    )
    result = mz.compress(lenet, digits, recipe, measure_latency=False)
    model = result["model"]
    assert isinstance(model.fc1, QuantLinear)
    zeros = sum(int((getattr(model, n).qweight == 0).sum()) for n in ("fc1", "fc2", "fc3"))
    total = sum(getattr(model, n).qweight.numel() for n in ("fc1", "fc2", "fc3"))
    assert zeros / total >= 0.8
    assert result["compressed"]["sparsity"] >= 0.79
    assert result["stages"][1]["notes"]["observer"] == "percentile"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("fc1.in_scale", torch.tensor(0.0), "in_scale must be finite and > 0"),
        ("fc2.w_scale", torch.full((10,), float("nan")), "w_scale must be finite"),
        ("conv1.out_zero_point", torch.tensor(999, dtype=torch.int32), "uint8 range"),
    ],
)
def test_hostile_qparams_in_a_file_are_refused_on_load(w8a8, key, value, match):
    import copy

    from modelzip.errors import FormatError

    model, _ = w8a8
    hostile = copy.deepcopy(model)
    module, _, name = key.rpartition(".")
    # The writer stores what the module holds; a hand-made file can hold anything.
    getattr(hostile, module)._buffers[name] = value
    bad = mzip.to_bytes(hostile)
    with pytest.raises(FormatError, match=match):
        mzip.from_bytes(bad)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "kl"])
def test_every_observer_gives_a_working_int8_model(lenet5, digits, observer):
    model, notes = run_stage(lenet5, digits, activations={"observer": observer})
    assert notes["observer"] == observer and notes["calibration_batches"] >= 1
    for name in ("conv2", "fc1"):
        lo, hi = notes["layers"][name]["act_range"]
        seen_hi = notes["layers"][name]["act_observed"][1]
        assert lo == 0.0 and 0 < hi <= seen_hi * 1.001
    assert accuracy(model, digits.test) >= accuracy(lenet5, digits.test) - 0.02


def test_a_layer_the_data_never_reaches_stays_float_and_is_reported(digits):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.unused = nn.Linear(64, 10), nn.Linear(10, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    model, notes = run_stage(Net(), digits, activations={"observer": "minmax"})
    assert "never ran on the calibration data" in notes["float_activations"]["unused"]
    assert isinstance(model.fc, QuantLinear) and isinstance(model.unused, nn.Linear)
    assert notes["chained"] == []  # not a Sequential: every int8 layer returns float
