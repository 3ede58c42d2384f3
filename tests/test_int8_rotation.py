"""Hadamard-rotated dynamic int8 layers: the rotation itself, the layer's exactness to its
reference, save/load, ONNX export, the planner and the recipe field's validation."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.export import export_onnx, ort_session
from modelzip.nn import rotation
from modelzip.nn.dynamic import DynQuantLinear, fake_rows
from modelzip.registry import get_method
from modelzip.testing.user_models import write_tiny_bert
from modelzip.train import Trainer


def outlier_input(seed: int = 0, features: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, features, generator=g)
    x[..., 5] += 40.0  # one outlier feature, as in transformer activations
    return x


@pytest.mark.parametrize("b", [2, 8, 32, 256])
def test_the_block_hadamard_is_orthogonal_symmetric_and_its_own_inverse(b):
    h = rotation.hadamard(b).double()
    assert torch.allclose(h @ h.t(), torch.eye(b, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.t())
    x = torch.randn(3, 5, 4 * b, dtype=torch.float64)
    r = rotation.rotate(x, b)
    assert torch.allclose(rotation.rotate(r, b), x, atol=1e-10)
    assert torch.allclose(r.norm(dim=-1), x.norm(dim=-1))  # lengths kept, row by row
    # blockwise: the first block's output depends only on the first block's input
    y = x.clone()
    y[..., b:] = 0
    assert torch.allclose(rotation.rotate(y, b)[..., :b], r[..., :b])


def test_rotation_spreads_one_outlier_feature_over_its_block():
    x = torch.zeros(1, 64)
    x[0, 3] = 100.0
    r = rotation.rotate(x, 32)
    assert float(r[0, :32].abs().min()) == pytest.approx(100 / 32**0.5, rel=1e-5)
    assert float(r[0, 32:].abs().max()) == 0.0


def test_block_for_takes_the_largest_power_of_two_that_divides():
    assert rotation.block_for(384, 32) == 32
    assert rotation.block_for(384, 256) == 128
    assert rotation.block_for(1536, 100) == 64  # 100 rounds down to a power of two
    assert rotation.block_for(24, 32) == 8
    assert rotation.block_for(20, 32) == 0  # only 4 divides: too small to help
    assert rotation.block_for(384, 0) == 0


def test_rotate_gram_is_the_gram_matrix_of_the_rotated_rows():
    x = torch.randn(200, 64, dtype=torch.float64)
    gram = x.t() @ x
    xr = rotation.rotate(x, 16)
    assert torch.allclose(rotation.rotate_gram(gram, 16), xr.t() @ xr, atol=1e-9)


def test_bad_block_sizes_are_refused():
    for bad in (3, 1, 512, -4):
        assert not rotation.is_block(bad)
        with pytest.raises(ValueError, match="power of two"):
            rotation.hadamard(bad)
    with pytest.raises(ValueError, match="divide"):
        rotation.rotate(torch.zeros(2, 24), 16)
    with pytest.raises(ValueError, match="rotate"):
        DynQuantLinear(24, 4, rotate=16)  # 16 does not divide 24
    with pytest.raises(ValueError, match="rotate"):
        DynQuantLinear(24, 4, rotate=6)


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
def test_a_rotated_layer_computes_its_reference_saves_and_exports(asymmetric, tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    smooth = torch.rand(48) + 0.5
    q = DynQuantLinear.from_float(lin.weight, lin.bias, smooth, asymmetric=asymmetric, rotate=16)
    assert q.rotate == 16 and q.to_spec()["rotate"] == 16
    x = outlier_input()
    w_hat = q.qweight.float() * q.w_scale[:, None]
    with torch.inference_mode():
        y = q(x)
        rows = rotation.rotate(x.reshape(-1, 48) / smooth, 16)
        want = nn.functional.linear(fake_rows(rows, asymmetric=asymmetric), w_hat, lin.bias)
    assert float((y.reshape(-1, 20) - want).abs().max()) < 1e-4
    # the weight it multiplies by is the float weight (rotation and smoothing undone)
    w = lin.weight.detach()
    assert float((q.dequantized_weight() - w).abs().max()) < 0.02 * float(w.abs().max())
    path = tmp_path / "rot.mzip"
    mz.save(nn.Sequential(q), path)
    back = mz.load(path, model=nn.Sequential(nn.Linear(48, 20)))[0]
    assert back.rotate == 16
    with torch.inference_mode():
        assert torch.equal(back(x), y)
    onnx_path = tmp_path / "rot.onnx"
    export_onnx(nn.Sequential(q).eval(), onnx_path, example=x[:1])
    got = ort_session(onnx_path).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - y.numpy()).max()) < 1e-4


@pytest.mark.parametrize("shape", [(6, 64), (2, 3, 64), (2, 2, 3, 64)], ids=["2d", "3d", "4d"])
def test_rotated_layers_export_one_reshape_matmul_reshape_per_rotation(shape, tmp_path):
    # two rotated layers in a row (the exporter once failed on the second), inputs of any rank;
    # the rotation's shapes are constants or one Shape: no Gather / Concat subgraph per layer
    torch.manual_seed(1)
    a, b = nn.Linear(64, 64), nn.Linear(64, 8)
    model = nn.Sequential(
        DynQuantLinear.from_float(a.weight, a.bias, rotate=32),
        nn.ReLU(),
        DynQuantLinear.from_float(b.weight, b.bias, torch.rand(64) + 0.5, rotate=16),
    ).eval()
    x = torch.randn(*shape)
    path = tmp_path / "two.onnx"
    export_onnx(model, path, example=x)
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert kinds.count("MatMul") == 2 and kinds.count("Reshape") == 4
    assert kinds.count("Shape") <= 2 and not {"Gather", "Concat", "Unsqueeze"} & set(kinds)
    with torch.inference_mode():
        want = model(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert got.shape == want.shape and float(np.abs(got - want).max()) < 1e-4


def test_rotation_cuts_the_int8_error_of_an_outlier_input():
    torch.manual_seed(3)
    lin = nn.Linear(64, 32)
    x = outlier_input(features=64)
    with torch.inference_mode():
        ref = lin(x)
        err = {
            b: float(
                (DynQuantLinear.from_float(lin.weight, lin.bias, rotate=b)(x) - ref).pow(2).mean()
            )
            for b in (0, 32)
        }
    assert err[32] < 0.3 * err[0]


@pytest.fixture(scope="module")
def english():
    return mz.load_data("english", batch_size=32)


def test_the_planner_rotates_every_dynamic_layer_of_a_tiny_bert_and_exports(english, tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder)).eval()
    fields = {
        "bits": 8,
        "calibration_batches": 2,
        "activations": {"mode": "dynamic", "weight_rounding": "gptq", "rotate": 32},
    }
    cfg = get_method("quantize").config.parse(fields)
    ctx = Context(data=english, trainer=Trainer(progress=False))
    q = get_method("quantize").apply(copy.deepcopy(model), cfg, ctx)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, DynQuantLinear)}
    assert len(layers) == 13
    for name, m in layers.items():
        assert m.rotate == rotation.block_for(m.in_features, 32) and m.rotate >= 8
        assert ctx.notes["layers"][name]["rotate"] == m.rotate
    x = english.example(32)
    with torch.inference_mode():
        assert float(nn.functional.cosine_similarity(q(x), model(x)).min()) > 0.999
    path = tmp_path / "q.onnx"
    info = export_onnx(q, path, example=english.example(1))
    assert info["max_abs_diff"] < 1e-4
    with torch.inference_mode():
        want = q(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - want).max()) < 1e-4


@pytest.mark.parametrize("bad", [3, 512, -1])
def test_a_recipe_rotate_that_is_not_a_block_size_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="rotate"):
        get_method("quantize").config.parse({"bits": 8, "activations": {"rotate": bad}})
