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


def test_fold_bn_is_a_recipe_stage(digits):
    model = trained_like("residual_cnn")
    before = mz.evaluate(model, digits, measure_latency=False)["accuracy"]
    recipe = Recipe.from_dict({"stages": [{"method": "fold_bn"}]})
    model, stages = run(model, recipe, make_ctx(digits))
    assert stages[0]["method"] == "fold_bn" and len(stages[0]["notes"]["folded"]) == 6
    assert stages[0]["accuracy"] == before
