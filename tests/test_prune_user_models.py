"""Structured pruning on models written the way users write them (modelzip.testing)."""

from __future__ import annotations

import pytest
import torch
from support import make_ctx
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.errors import UnsupportedError
from modelzip.graph import channel_groups, fold_batchnorm
from modelzip.methods.prune import PruneConfig, prune
from modelzip.recipe import Recipe
from modelzip.testing import user_models as um

FIXTURES = "src/modelzip/testing/user_models.py"


def zero_out(layer: nn.Module, channels: list[int]) -> None:
    with torch.no_grad():
        layer.weight[channels] = 0
        if layer.bias is not None:
            layer.bias[channels] = 0


def test_control_flow_on_the_input_is_traced_on_the_real_batch(digits):
    flat = digits.example(2).flatten(1)  # rows from a table: forward reshapes them
    groups = channel_groups(um.residual_cnn(), flat)
    stem = groups["stem"]
    assert sorted(stem.producers) == ["blocks.0.conv2", "blocks.1.conv2", "stem"]
    assert sorted(stem.norms) == ["blocks.0.bn2", "blocks.1.bn2", "stem_bn"]
    assert groups["down"].consumers == [("head", 1)] and groups["down"].prunable


def test_concat_net_is_exact_when_removed_channels_are_zero(digits):
    model = um.concat_net().eval()
    x = digits.example(32)
    fold_batchnorm(model, x[:2])  # the BatchNorm after torch.cat folds into both branches
    zero_out(model.branch1, list(range(0, 12, 2)))
    zero_out(model.branch3[2], list(range(6)))
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["branch1", "branch3.2"]), ctx)
    assert model.branch1.out_channels == 6 and model.branch3[2].out_channels == 6
    assert model.mix.in_channels == 12
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


class ConvBNHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("fold", [False, True])
def test_batchnorm_shift_on_removed_channels_is_exact(digits, fold):
    torch.manual_seed(0)
    model = ConvBNHead().eval()
    with torch.no_grad():
        model.bn.bias.uniform_(0.2, 1.0)  # removed channels still output relu(shift) > 0
        model.bn.running_mean.uniform_(-0.5, 0.5)
    zero_out(model.conv, [1, 3, 5, 7])
    x = digits.example(32)
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["conv"], fold_bn=fold), ctx)
    assert model.conv.out_channels == 4 and ctx.notes["bias_repaired"] == ["head"]
    assert isinstance(model.bn, nn.Identity) == fold
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_depthwise_convs_follow_their_input_channels(digits):
    model = um.depthwise_cnn().eval()
    x = digits.example(16)
    fold_batchnorm(model, x[:2])
    zero_out(model.stem, list(range(8, 16)))
    with torch.no_grad():
        ref = model(x)
    groups = channel_groups(model, x[:2])
    assert groups["stem"].followers == ["features.0"] and groups["features.0"] is groups["stem"]
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["stem"]), make_ctx(digits))
    dw = model.features[0]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (8, 8, 8)
    assert model.features[3].in_channels == 8
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_bn_scale_criterion_removes_the_smallest_gammas(digits):
    model = um.residual_cnn().eval()
    with torch.no_grad():
        model.down_bn.weight.copy_(torch.cat([torch.full((16,), 0.01), torch.ones(16)]))
    prune(
        model,
        PruneConfig(
            pattern="channel", sparsity=0.5, layers=["down"], criterion="bn_scale", fold_bn=False
        ),
        make_ctx(digits),
    )
    assert torch.equal(model.down_bn.weight.detach(), torch.ones(16))


def test_gradual_channel_schedule_masks_then_cuts(digits, lenet300):
    base = mz.evaluate(lenet300, digits, measure_latency=False)["accuracy"]
    ctx = make_ctx(digits)
    cfg = PruneConfig(pattern="channel", sparsity=0.5, schedule="gradual", epochs=2, rounds=4)
    prune(lenet300, cfg, ctx)
    assert lenet300.fc1.out_features == 150 and lenet300.fc2.in_features == 150
    assert not hasattr(lenet300.fc1, "parametrizations")  # the temporary masks are gone
    kept = [s["kept"]["fc1"] for s in ctx.notes["steps"]]
    assert kept == sorted(kept, reverse=True) and kept[-1] == 150 and kept[0] < 300
    assert mz.evaluate(lenet300, digits, measure_latency=False)["accuracy"] >= base - 0.03


def test_attention_heads_are_removed_whole(tmp_path):
    folder = um.write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder))
    data = mz.load_data("sentences")
    x = data.example(8)
    groups = channel_groups(model, x[:2])
    q = "encoder.encoder.layer.0.attention.self.query"
    assert groups[q].block == 16 and len(groups[q].producers) == 3  # q, k, v: 2 heads of 16
    assert groups["encoder.encoder.layer.0.intermediate.dense"].prunable  # MLP neurons
    assert "add()" in groups["encoder.encoder.layer.0.output.dense"].blocked[0]
    for layer in model.encoder.encoder.layer:  # head 1 contributes nothing
        for lin in (
            layer.attention.self.query,
            layer.attention.self.key,
            layer.attention.self.value,
        ):
            zero_out(lin, list(range(16, 32)))
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(data)
    ctx.teacher = model
    prune(
        model,
        PruneConfig(pattern="channel", sparsity=0.5, layers=["re:.*self\\.(query|key|value)"]),
        ctx,
    )
    att = model.encoder.encoder.layer[1].attention
    assert att.self.value.out_features == 16 and att.output.dense.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    prune(
        model, PruneConfig(pattern="channel", sparsity=0.5, layers=["re:.*intermediate.dense"]), ctx
    )
    assert model.encoder.encoder.layer[0].output.dense.in_features == 32
    loaded, _ = mzip.from_bytes(mzip.to_bytes(model))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).cumsum(1).flatten(1))


def test_an_unknown_op_is_named_in_one_line(digits):
    with pytest.raises(
        UnsupportedError,
        match=r"^cannot remove output channels of conv: cumsum\(\) works along them$",
    ):
        prune(Stacked(), PruneConfig(pattern="channel", layers=["conv"]), make_ctx(digits))


@pytest.mark.parametrize("name", ["residual_cnn", "concat_net", "depthwise_cnn", "tabular_mlp"])
def test_fixture_prunes_finetunes_and_round_trips(name, digits, tmp_path):
    data = (
        mz.load_data(str(um.write_tabular_npz(tmp_path / "t.npz")))
        if name == "tabular_mlp"
        else digits
    )
    model = mz.load_model(f"{FIXTURES}:{name}")
    recipe = Recipe.from_dict(
        {
            "stages": [
                {"method": "finetune", "epochs": 4, "lr": 1e-2},
                {"method": "prune", "pattern": "channel", "sparsity": 0.5},
                {"method": "finetune", "epochs": 3, "lr": 3e-3},
                {"method": "fold_bn"},  # after training: the file stores no BatchNorm
            ]
        }
    )
    out = tmp_path / "m.mzip"
    res = mz.compress(model, data, recipe, out=out, measure_latency=False)
    assert res["compressed"]["params"] < 0.6 * res["baseline"]["params"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in res["model"].modules())
    # chance: 0.63 (tabular), 0.1 (digits); concat_net learns slowest in 4 + 3 epochs
    floor = {"tabular_mlp": 0.9, "concat_net": 0.5}.get(name, 0.75)
    assert res["compressed"]["accuracy"] >= floor
    loaded = mz.load(out, model=getattr(um, name))  # the caller's architecture
    again = mz.evaluate(loaded, data, measure_latency=False)
    assert again["accuracy"] == res["compressed"]["accuracy"] == res["stages"][-1]["accuracy"]


class Chunked(nn.Module):
    """A conv's channels split in two halves, each to its own branch, then concatenated."""

    def __init__(self, fixed_split: bool = False) -> None:
        super().__init__()
        self.fixed_split = fixed_split
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        a, b = y.split(4, dim=1) if self.fixed_split else y.chunk(2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).flatten(1))


def test_chunk_maps_channel_ranges_and_keeps_halves_equal(digits):
    torch.manual_seed(0)
    model = Chunked().eval()
    zero_out(model.conv, [0, 1, 4, 5])  # two of each half
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    groups = channel_groups(model, x[:2])
    assert groups["conv"].sections == [(0, 4), (4, 8)]
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["conv"]), make_ctx(digits))
    assert model.left.in_channels == 2 and model.right.in_channels == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    with pytest.raises(UnsupportedError, match=r"conv: split\(\) cuts them into fixed sizes"):
        prune(Chunked(True), PruneConfig(pattern="channel", layers=["conv"]), make_ctx(digits))


class FixedView(nn.Module):
    """The classic LeNet forward: the flatten size written as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).view(-1, 256))


def test_a_shape_fixed_in_forward_is_reported_and_the_model_left_whole(digits):
    model = FixedView().eval()
    x = digits.example(4)
    with torch.no_grad():
        ref = model(x)
    with pytest.raises(UnsupportedError, match=r"no longer runs with fewer channels"):
        prune(model, PruneConfig(pattern="channel", layers=["conv"]), make_ctx(digits))
    assert model.conv.out_channels == 4 and model.head.in_features == 256
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_round_to_keeps_whole_vector_blocks_of_channels(digits):
    model = um.residual_cnn().eval()
    x = digits.example(16)
    cfg = PruneConfig(pattern="channel", sparsity=0.6, round_to=8)  # 16 * 0.4 = 6.4 -> 8
    prune(model, cfg, make_ctx(digits))
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [8, 8, 8, 8, 8, 16]  # down: 32 * 0.4 = 12.8 -> 16
    assert model(x).shape == (16, 10)


def test_round_to_rounds_each_section_and_never_widens():
    from modelzip.methods._prune_channels import select_keep

    scores = torch.arange(20, dtype=torch.float)
    assert select_keep(scores, 10, round_to=8).tolist() == list(range(12, 20))
    assert select_keep(scores[:6], 3, round_to=8).tolist() == list(range(6))  # kept whole
    two = select_keep(scores, 10, sections=[(0, 10), (10, 20)], round_to=4)
    assert two.tolist() == [6, 7, 8, 9, 16, 17, 18, 19]  # 5 per half -> 4 per half


def test_round_to_needs_pattern_channel():
    with pytest.raises(ValueError, match="round_to"):
        PruneConfig(sparsity=0.5, round_to=8)


class GroupedNet(nn.Module):
    """ResNeXt-style: a 1x1 conv, a grouped 3x3 conv (4 groups), a 1x1 conv, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(1, 16, 1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.expand = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.grouped(torch.relu(self.reduce(x))))
        return self.head(torch.relu(self.expand(y)).mean((2, 3)))


def test_grouped_conv_loses_the_same_channels_per_group_and_stays_exact(digits):
    torch.manual_seed(0)
    model = GroupedNet().eval()
    x = digits.example(16)
    zero_out(model.reduce, [0, 1, 4, 5, 8, 9, 12, 13])  # two inputs of each group of four
    zero_out(model.grouped, [r + 8 * j for j in range(4) for r in range(4)])  # 4 per group
    with torch.no_grad():
        ref = model(x)
    groups = channel_groups(model, x[:2])
    assert groups["reduce"].prunable and groups["grouped"].prunable
    assert sorted(groups["grouped"].sections) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    cfg = PruneConfig(pattern="channel", sparsity=0.5, layers=["reduce", "grouped"])
    prune(model, cfg, make_ctx(digits))
    g = model.grouped
    assert (g.in_channels, g.out_channels, g.groups) == (8, 16, 4)
    assert g.weight.shape == (16, 2, 3, 3) and model.expand.in_channels == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_grouped_conv_keeps_equal_counts_when_importance_is_lopsided(digits):
    torch.manual_seed(0)
    model = GroupedNet().eval()
    zero_out(model.reduce, [0, 1, 2, 3])  # one whole group of inputs is the least important
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["reduce"]), make_ctx(digits))
    assert model.grouped.in_channels == 8 and model.grouped.weight.shape[1] == 2
    assert model(digits.example(4)).shape == (4, 10)
