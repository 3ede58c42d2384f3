"""PyTorch's own nn.TransformerEncoder: its eval-mode fast path reads Linear weights directly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.nn.quantized import QuantLinear
from modelzip.testing import user_models as um
from modelzip.train import Trainer


@pytest.fixture(scope="module")
def trained(digits):
    model = um.torch_transformer()
    Trainer(progress=False).fit(model, digits.train, epochs=8, lr=2e-3)
    return model.eval()


def _integer_calls(model: nn.Module, x: torch.Tensor, **kw) -> int:
    calls = []
    hooks = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in model.modules()
        if isinstance(m, QuantLinear | DynQuantLinear)
    ]
    with torch.inference_mode():
        model(x, **kw) if not kw else model.encoder(x, **kw)
    for h in hooks:
        h.remove()
    return len(calls)


@pytest.mark.parametrize("recipe", ["w8a8", "w7a8"])
def test_int8_recipes_run_their_integer_layers_inside_torch_transformers(
    recipe, trained, digits, tmp_path
):
    """The fused fast path read ``linear1.weight`` of the int8 layer: AttributeError. Now the
    encoder layers take their slow path, which calls the int8 layers, in the compressed model
    and in the one loaded from the file; out_proj (read directly by MultiheadAttention) stays
    float with its reason."""
    out = tmp_path / "t.mzip"
    res = mz.compress(trained, digits, recipe, out=out, measure_latency=False)
    assert res["compressed"]["accuracy"] >= res["baseline"]["accuracy"] - 0.02
    assert res["ratio"] > 3.3  # 2.1x while the packed q/k/v weights stayed fp32
    assert res["split_modules"] == dict.fromkeys(
        ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"], "split"
    )
    x = digits.example(16)
    loaded = mz.load(out, model=um.torch_transformer())
    # q, k, v, out_proj, linear1 and linear2 of both encoder layers, embed and head: int8
    assert _integer_calls(loaded, x) == 14
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    # the encoder's own fast path (a padding mask) reads the first layer's weights too
    tokens = loaded.embed(x.reshape(16, 8, 8)) + loaded.pos  # the fixture's first step
    mask = torch.zeros(16, 8, dtype=torch.bool)
    mask[:, 6:] = True
    assert _integer_calls(loaded, tokens, src_key_padding_mask=mask) == 12


def test_lowrank_factors_run_inside_torch_transformers(trained, digits, tmp_path):
    """Low-rank factors replace linear1/linear2 (the fast path read their weight too); the
    attention's out_proj stays dense with its reason."""
    from modelzip.nn.lowrank import LowRankLinear
    from modelzip.recipe import Recipe

    recipe = Recipe.from_dict(
        {
            "name": "lr",
            "stages": [
                {"method": "lowrank", "ratio": {"default": 0.5, "role:last": 1}},
                {"method": "finetune", "epochs": 2},
            ],
        }
    )
    out = tmp_path / "l.mzip"
    res = mz.compress(trained, digits, recipe, out=out, measure_latency=False)
    loaded = mz.load(out, model=um.torch_transformer())
    layer = loaded.encoder.layers[0]
    assert isinstance(layer.linear1, LowRankLinear) and isinstance(
        layer.self_attn.q_proj, LowRankLinear
    )
    x = digits.example(16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    assert res["compressed"]["accuracy"] > 0.8  # half the rank, two epochs: it still works


E, H = 32, 4


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_split_attention_computes_what_multihead_attention_computes(batch_first, bias):
    from modelzip.nn.attention import SplitAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first).eval()
    split = SplitAttention.from_attention(mha).eval()
    n, tgt, src = 3, 5, 7

    def seq(length: int) -> torch.Tensor:
        return torch.randn(n, length, E) if batch_first else torch.randn(length, n, E)

    q, k, v = seq(tgt), seq(src), seq(src)
    pad = torch.zeros(n, src, dtype=torch.bool)
    pad[0, -2:] = True
    allowed = torch.rand(tgt, src) > 0.8
    allowed[:, 0] = False
    masks = [
        {},
        {"key_padding_mask": pad},
        {"attn_mask": allowed},
        {"attn_mask": torch.randn(n * H, tgt, src), "key_padding_mask": pad},
        {"attn_mask": allowed.float() * -1e9},
    ]
    for kw in masks:
        for need, avg in [(True, True), (True, False), (False, True)]:
            with torch.no_grad():
                want = mha(q, k, v, need_weights=need, average_attn_weights=avg, **kw)
                got = split(q, k, v, need_weights=need, average_attn_weights=avg, **kw)
            assert torch.allclose(got[0], want[0], atol=1e-5), (list(kw), need, avg)
            assert (got[1] is None) == (want[1] is None)
            if want[1] is not None:
                assert torch.allclose(got[1], want[1], atol=1e-6)
    x = torch.randn(tgt, E)  # unbatched
    with torch.no_grad():
        assert torch.allclose(split(x, x, x)[0], mha(x, x, x)[0], atol=1e-5)


def test_encoders_and_decoders_with_split_attention_match_pytorch(tmp_path):
    import copy

    from modelzip.nn.attention import split_attention

    torch.manual_seed(1)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 64, 0.0, batch_first=True), 2)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, H, 64, 0.0, batch_first=True), 2)
    x, mem = torch.randn(3, 5, E), torch.randn(3, 7, E)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for model, call in (
        (enc, lambda m: m(x, mask=causal, is_causal=True)),
        (enc, lambda m: m(x)),
        (dec, lambda m: m(x, mem, tgt_mask=causal, tgt_is_causal=True)),
    ):
        split = copy.deepcopy(model)
        assert set(split_attention(split).values()) == {"split"}
        for train in (False, True):
            model.train(train), split.train(train)
            with torch.no_grad():
                assert torch.allclose(call(split), call(model), atol=1e-5)


def test_attention_split_cannot_represent_is_left_with_its_reason_and_runs(digits):
    """kdim/vdim differ from the embedding size: PyTorch keeps separate q/k/v weights, read
    directly; that module stays, and its out_proj stays float in w8a8 with the reason."""

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.att = nn.MultiheadAttention(32, 4, kdim=8, vdim=8, batch_first=True)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            rows = x.reshape(len(x), 8, 8)
            return self.head(self.att(self.embed(rows), rows, rows)[0].mean(1))

    torch.manual_seed(0)
    model = Cross()
    Trainer(progress=False).fit(model, digits.train, epochs=5, lr=3e-3)
    res = mz.compress(model.eval(), digits, "w8a8", measure_latency=False)
    assert "different sizes" in res["split_modules"]["att"]
    notes = next(s["notes"] for s in res["stages"] if s["method"] == "quantize")
    assert "reads this layer's weight directly" in notes["float_activations"]["att.out_proj"]
    assert res["compressed"]["accuracy"] >= res["baseline"]["accuracy"] - 0.03


def test_channel_pruning_removes_whole_heads_of_pytorch_attention(trained, digits, tmp_path):
    """With q/k/v as layers, structured pruning finds the heads (as in Hugging Face models):
    half of each layer's heads and MLP neurons go, and the file loads into the user's model."""
    out = tmp_path / "p.mzip"
    res = mz.compress(trained, digits, "prune-channels", out=out, measure_latency=False)
    notes = next(s["notes"] for s in res["stages"] if s["method"] == "prune")
    assert notes["block"]["encoder.layers.0.self_attn.q_proj"] == 16  # one head's channels
    assert notes["channels"]["encoder.layers.0.self_attn.v_proj"] == "64 -> 32"
    loaded = mz.load(out, model=um.torch_transformer())
    assert loaded.encoder.layers[1].self_attn.k_proj.out_features == 32
    x = digits.example(16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    assert res["compressed"]["accuracy"] >= res["baseline"]["accuracy"] - 0.03


def test_a_compressed_torch_transformer_exports_to_onnx(trained, digits, tmp_path):
    from modelzip.cli import main

    mzip = tmp_path / "t.mzip"
    mz.compress(trained, digits, "w8a8", out=mzip, measure_latency=False)
    onnx = tmp_path / "t.onnx"
    spec = f"{um.__file__}:torch_transformer"
    assert main(["export", str(mzip), "--model", spec, "--onnx", str(onnx)]) == 0
