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
    notes = next(s["notes"] for s in res["stages"] if s["method"] == "quantize")
    out_proj = "encoder.layers.0.self_attn.out_proj"
    assert "reads this layer's weight directly" in notes["float_activations"][out_proj]
    x = digits.example(16)
    loaded = mz.load(out, model=um.torch_transformer())
    assert _integer_calls(loaded, x) >= 4  # linear1 and linear2 of both encoder layers
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    # the encoder's own fast path (a padding mask) reads the first layer's weights too
    tokens = loaded.embed(x.reshape(16, 8, 8)) + loaded.pos
    mask = torch.zeros(16, 8, dtype=torch.bool)
    mask[:, 6:] = True
    assert _integer_calls(loaded, tokens, src_key_padding_mask=mask) >= 4


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
    notes = next(s["notes"] for s in res["stages"] if s["method"] == "lowrank")
    reason = notes["skipped"]["encoder.layers.0.self_attn.out_proj"]
    assert "reads this layer's weight directly" in reason
    loaded = mz.load(out, model=um.torch_transformer())
    assert isinstance(loaded.encoder.layers[0].linear1, LowRankLinear)
    x = digits.example(16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    assert res["compressed"]["accuracy"] > 0.8  # half the rank, two epochs: it still works
