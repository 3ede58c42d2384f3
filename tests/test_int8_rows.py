"""Dynamic int8 rows: asymmetric rows, 16-bit rows (two int8 passes), GPTQ-rounded int8 weights,
and their export to ONNX Runtime; the w8a8 planner's choices on a tiny random BERT."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.export import export_onnx, ort_session
from modelzip.nn.dynamic import DynQuantLinear, fake_rows
from modelzip.ops import gptq as ops_gptq
from modelzip.quant import dynamic as quant_dynamic
from modelzip.quant.plan import int8_codes
from modelzip.registry import get_method
from modelzip.testing.user_models import write_tiny_bert
from modelzip.train import Trainer

MODES = [{}, {"asymmetric": True}, {"act_bits": 16}]
IDS = ["symmetric", "asymmetric", "rows16"]


def outlier_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 48, generator=g)
    x[..., 5] += 30.0  # an outlier feature, as in transformer activations
    return x


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_each_row_mode_computes_its_fake_quant_reference_and_exports(mode, tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    q = DynQuantLinear.from_float(lin.weight, lin.bias, **mode)
    x = outlier_input()
    w_hat = q.qweight.float() * q.w_scale[:, None]
    with torch.inference_mode():
        y = q(x)
        want = nn.functional.linear(fake_rows(x.reshape(-1, 48), **mode), w_hat, lin.bias)
    assert float((y.reshape(-1, 20) - want).abs().max()) < 1e-4
    path = tmp_path / "q.onnx"
    export_onnx(nn.Sequential(q).eval(), path, example=x[:1])
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(got - y.numpy()).max()) < 1e-4
    # the file holds the int8 weight once per product that reads it (16-bit rows: two, each
    # with its own copy, which ORT's no-VNNI precision rewrite converts in place) and nothing
    # weight-sized besides (an asymmetric layer once exported an int64 copy for the row sums)
    sizes = sorted(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    copies = 2 if mode.get("act_bits") == 16 else 1
    assert sizes[-copies:] == [48 * 20] * copies
    assert len(sizes) <= copies or sizes[-copies - 1] <= 20


@pytest.mark.parametrize(("mode", "most"), list(zip(MODES, (9, 19, 16), strict=True)), ids=IDS)
def test_a_smoothed_dynamic_layer_exports_as_a_short_graph_on_n_d_rows(mode, most, tmp_path):
    # at batch 1 each ONNX node's fixed cost counts (MiniLM in ORT: 2 threads, 5.65 -> 4.71 ms
    # from removing the reshape chains and the Round/Clip/Add/Cast codes of each layer)
    torch.manual_seed(0)
    lin = nn.Linear(48, 20)
    q = DynQuantLinear.from_float(lin.weight, lin.bias, **mode)
    q.smooth.uniform_(0.5, 2.0)
    x = outlier_input()
    path = tmp_path / "q.onnx"
    export_onnx(nn.Sequential(q).eval(), path, example=x[:1])
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Constant"]
    assert len(nodes) <= most and "Reshape" not in nodes and "Reciprocal" not in nodes
    with torch.inference_mode():
        want = q(x).numpy()
    assert float(np.abs(ort_session(path).run(None, {"input": x.numpy()})[0] - want).max()) < 1e-4


def test_row_modes_rank_as_designed_on_one_sided_and_outlier_inputs():
    g = torch.Generator().manual_seed(1)
    gelu_out = nn.functional.gelu(torch.randn(256, 64, generator=g) * 2)  # one-sided rows
    err = {
        name: float((fake_rows(gelu_out, **kw) - gelu_out).pow(2).mean())
        for name, kw in (("sym", {}), ("asym", {"asymmetric": True}), ("16", {"act_bits": 16}))
    }
    assert err["asym"] < 0.5 * err["sym"]  # twice the resolution on one-sided rows
    assert err["16"] < 1e-3 * err["sym"]  # the residual pass: about 16-bit precision


def test_act_bits_16_needs_symmetric_rows():
    with pytest.raises(ValueError, match="act_bits"):
        DynQuantLinear(8, 4, asymmetric=True, act_bits=16)
    with pytest.raises(ValueError, match="act_bits"):
        DynQuantLinear(8, 4, act_bits=12)


@pytest.mark.parametrize("bits", [8, 7])
def test_gptq_int8_codes_beat_nearest_on_correlated_inputs(bits):
    qmax = 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(2048, 64, generator=g) @ mix  # correlated inputs: where GPTQ helps
    w = torch.randn(32, 64, generator=g)
    gram = (x.T @ x).double()
    near, s_near, how_near = int8_codes(w, bits=bits)
    codes, scale, how = int8_codes(w, gram, x.shape[0], bits=bits)
    assert (how_near, how) == ("nearest", "gptq")
    assert torch.equal(scale, s_near)  # the same symmetric per-channel grid
    assert torch.allclose(scale, w.abs().amax(1) / qmax)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == qmax
    assert int(near.abs().max()) == qmax

    def out_err(c: torch.Tensor) -> float:
        return ops_gptq.output_error(x, w, c.float() * scale[:, None])

    assert out_err(codes) < 0.7 * out_err(near)
    # too few rows for the Hessian: nearest, never NaN
    few, _, how_few = int8_codes(w, gram, rows=10, bits=bits)
    assert how_few == "nearest" and torch.equal(few, near)


def test_promote_takes_the_largest_error_shares_first():
    damage = {"a": 0.05, "b": 0.5, "c": 0.3, "d": 0.15}
    assert list(quant_dynamic.promote(damage, 0.7)) == ["b", "c"]
    assert list(quant_dynamic.promote(damage, 0.0)) == []
    assert set(quant_dynamic.promote(damage, 1.0)) == set(damage)


@pytest.fixture(scope="module")
def english():
    return mz.load_data("english", batch_size=32)


def test_w8a8_planner_on_a_tiny_bert_uses_every_row_mode_and_round_trips(english, tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder)).eval()
    fields = {
        "bits": 8,
        "embeddings": True,
        "calibration_batches": 2,
        "activations": {
            "mode": "dynamic",
            "weight_rounding": "gptq",
            "rows": "auto",
            "rows16_share": 0.5,
        },
    }
    cfg = get_method("quantize").config.parse(fields)
    ctx = Context(data=english, trainer=Trainer(progress=False))
    q = get_method("quantize").apply(copy.deepcopy(model), cfg, ctx)
    layers = [m for m in q.modules() if isinstance(m, DynQuantLinear)]
    assert len(layers) == 13
    wide = [m for m in layers if m.act_bits == 16]
    assert 1 <= len(wide) < len(layers)
    assert sorted(ctx.notes["rows16"]["layers"]) == sorted(
        n for n, m in q.named_modules() if isinstance(m, DynQuantLinear) and m.act_bits == 16
    )
    notes = ctx.notes["layers"]
    assert {v.get("weight_rounding") for v in notes.values() if "weight_rounding" in v} == {"gptq"}
    x = english.example(32)
    with torch.inference_mode():
        cos = nn.functional.cosine_similarity(q(x), model(x))
    assert float(cos.min()) > 0.999
    path = tmp_path / "tb.mzip"
    mz.save(q, path)
    back = mz.load(path)
    kinds = [(m.asymmetric, m.act_bits) for m in back.modules() if isinstance(m, DynQuantLinear)]
    assert kinds == [(m.asymmetric, m.act_bits) for m in layers]
    with torch.inference_mode():
        assert torch.equal(back(x), q(x))


class ThreeHeads(nn.Module):
    """Three layers reading one input in a row, as a transformer's query, key and value."""

    def __init__(self, layers: list[DynQuantLinear]):
        super().__init__()
        self.q, self.k, self.v = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


@pytest.mark.parametrize("mode", MODES, ids=IDS)
def test_layers_reading_one_input_quantize_it_once_and_compute_the_same(mode, tmp_path):
    torch.manual_seed(1)
    smooth = torch.rand(48) + 0.5
    layers = []
    for _ in range(3):
        lin = nn.Linear(48, 20)
        layers.append(DynQuantLinear.from_float(lin.weight, lin.bias, smooth, **mode))
    model = ThreeHeads(layers).eval()
    x = outlier_input()
    with torch.no_grad():
        alone = torch.cat([m(x.clone()) for m in layers], dim=-1)  # a new tensor each time
        assert torch.equal(model(x), alone)
        # changed in place between two layers: the codes are made again, not reused
        y1 = model.q(x)
        x.mul_(2.0)
        assert torch.equal(model.k(x), layers[1](x.clone())) and y1.shape == (4, 6, 20)
    path = tmp_path / "three.onnx"
    export_onnx(model, path, example=x[:1])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == (2 if "act_bits" in mode else 1)
    # and multiply them once, by the three weights side by side (modelzip.nn.onnx_merge)
    products = 2 if "act_bits" in mode else 1
    assert ops.count("MatMulIntegerToFloat") == products and ops.count("Split") == products
    with torch.no_grad():
        want = model(x).numpy()
    assert float(np.abs(ort_session(path).run(None, {"input": x.numpy()})[0] - want).max()) < 1e-4
    # the middle one smoothed otherwise: the last one cannot reuse the first one's codes
    model.k.smooth.mul_(1.5)
    model.k._smooth_hash = None
    export_onnx(model, path, example=x[:1])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == (6 if "act_bits" in mode else 3)
    assert ops.count("MatMulIntegerToFloat") == (6 if "act_bits" in mode else 3)
    with torch.no_grad():
        want = model(x).numpy()
    assert float(np.abs(ort_session(path).run(None, {"input": x.numpy()})[0] - want).max()) < 1e-4


def test_the_w8a8_planner_gives_query_key_value_one_smoothing_and_row_kind(english, tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder)).eval()
    q = mz.compress(model, english, "w8a8", measure_latency=False)["model"]
    found = 0
    for name, m in q.named_modules():
        if name.endswith("attention.self.query") and isinstance(m, DynQuantLinear):
            parent = q.get_submodule(name.rsplit(".", 1)[0])
            eight = [t for t in (m, parent.key, parent.value) if t.act_bits == 8]
            # (a layer promoted to 16-bit rows is unsmoothed and leaves the group)
            for t in eight[1:]:
                assert torch.equal(t.smooth, eight[0].smooth)
                assert t.asymmetric == eight[0].asymmetric
            found += len(eight) >= 2
    assert found >= 1
