"""BatchNorm folding: exact in eval mode on the user-model fixtures, found from the graph."""

from __future__ import annotations

import pytest
import torch
from support import make_ctx
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.graph.fold import fold_batchnorm
from modelzip.methods.fold_bn import FoldBNConfig, fold_bn
from modelzip.methods.prune import PruneConfig, prune
from modelzip.methods.quantize import QuantizeConfig, quantize
from modelzip.pipeline import run
from modelzip.recipe import Recipe
from modelzip.testing import user_models as um

FIXTURES = "src/modelzip/testing/user_models.py"


def trained_like(name: str) -> nn.Module:
    """A fixture with BatchNorm statistics and affine values far from their defaults."""
    model = mz.load_model(f"{FIXTURES}:{name}")
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("residual_cnn", {"stem_bn": "stem", "blocks.1.bn2": "blocks.1.conv2", "down_bn": "down"}),
        ("concat_net", {"bn": "branch1, branch3.2"}),  # a BatchNorm after torch.cat
        ("depthwise_cnn", {"stem_bn": "stem", "features.1": "features.0"}),
    ],
)
def test_folding_keeps_outputs_and_drops_the_norms(name, expected, digits):
    model = trained_like(name)
    x = digits.example(64)
    with torch.no_grad():
        ref = model(x)
    report = fold_batchnorm(model, x[:2])
    assert expected.items() <= report["folded"].items() and report["kept"] == {}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    # The file stores no BatchNorm vectors and rebuilds the folded layers (with their bias).
    loaded, _ = mzip.from_bytes(mzip.to_bytes(model), model=getattr(um, name))
    assert not any("running_mean" in k for k in loaded.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_norm_whose_input_is_read_twice_is_kept(digits):
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return (self.bn(y) + y).flatten(1)

    model = Both().eval()
    report = fold_batchnorm(model, digits.example(2))
    assert report == {"folded": {}, "kept": {"bn": "the output of conv is also read elsewhere"}}
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_fold_keeps_a_pruning_mask(digits):
    model = trained_like("residual_cnn")
    ctx = make_ctx(digits)
    prune(model, PruneConfig(sparsity=0.5, scope="layer"), ctx)
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    zeros = int((model.stem.weight == 0).sum())
    fold_bn(model, FoldBNConfig(), ctx)
    assert ctx.notes["folded"]["stem_bn"] == "stem"
    assert int((model.stem.weight == 0).sum()) == zeros
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_quantize_folds_first_unless_disabled(digits):
    ctx = make_ctx(digits)
    model = quantize(trained_like("depthwise_cnn"), QuantizeConfig(bits=8), ctx)
    assert "stem_bn" in ctx.notes["fold_bn"]["folded"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    kept = quantize(trained_like("depthwise_cnn"), QuantizeConfig(bits=8, fold_bn=False), ctx)
    assert isinstance(kept.stem_bn, nn.BatchNorm2d)


def test_fold_bn_is_a_recipe_stage(digits):
    model = trained_like("residual_cnn")
    before = mz.evaluate(model, digits, measure_latency=False)["accuracy"]
    recipe = Recipe.from_dict({"stages": [{"method": "fold_bn"}]})
    model, stages = run(model, recipe, make_ctx(digits))
    assert stages[0]["method"] == "fold_bn" and len(stages[0]["notes"]["folded"]) == 6
    assert stages[0]["accuracy"] == before


def _prune_then_train(fold: str, last: list[dict] | None = None) -> Recipe:
    prune_stage = {"method": "prune", "pattern": "channel", "sparsity": 0.5, "fold_bn": fold}
    train = {"method": "finetune", "epochs": 1, "lr": 3e-3}
    return Recipe.from_dict({"stages": [prune_stage, train, *(last or [])]})


def test_channel_pruning_folds_batchnorm_after_the_last_stage_at_no_cost(digits):
    """The default: BatchNorm is there for ranking and fine-tuning, gone from the result, and
    the outputs are those of the same run that keeps it (folding is exact in eval mode)."""
    x = digits.example(32)
    folded = mz.compress(
        trained_like("residual_cnn"), digits, _prune_then_train("after"), measure_latency=False
    )
    kept = mz.compress(
        trained_like("residual_cnn"), digits, _prune_then_train("off"), measure_latency=False
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded["model"].modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in kept["model"].modules()) == 6
    notes = folded["stages"]
    assert notes[0]["notes"]["fold_bn"] == "after the recipe's last stage"
    assert len(notes[1]["notes"]["deferred"]["fold_bn"]["folded"]) == 6
    with torch.no_grad():
        torch.testing.assert_close(folded["model"](x), kept["model"](x), rtol=0, atol=1e-4)
    assert folded["compressed"]["bytes"] < kept["compressed"]["bytes"]


def test_deferred_folding_runs_before_an_encode_stage(digits):
    recipe = _prune_then_train("after", [{"method": "encode"}])
    res = mz.compress(trained_like("depthwise_cnn"), digits, recipe, measure_latency=False)
    assert "deferred" in res["stages"][1]["notes"] and "deferred" not in res["stages"][2]["notes"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in res["model"].modules())


def test_fold_bn_booleans_keep_their_meaning():
    assert PruneConfig(pattern="channel", fold_bn=True).fold_bn == "first"
    assert PruneConfig(pattern="channel", fold_bn=False).fold_bn == "off"
    assert PruneConfig(pattern="channel").fold_bn == "after"
