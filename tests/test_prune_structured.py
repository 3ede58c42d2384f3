"""Structured pruning: dependency groups from a real forward pass, surgery, reload, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import fresh, make_ctx
from torch import nn

import modelzip as mz
from modelzip.errors import UnsupportedError
from modelzip.factory import call_factory
from modelzip.graph import channel_groups
from modelzip.methods.prune import PruneConfig, prune

RESNETS = Path(__file__).parent / "prune_models.py"


def zero_channels(model: nn.Module, layer: str, channels: list[int]) -> None:
    m = model.get_submodule(layer)
    with torch.no_grad():
        m.weight[channels] = 0
        if m.bias is not None:
            m.bias[channels] = 0


def test_lenet5_groups_follow_the_graph(digits):
    groups = channel_groups(fresh("lenet5", digits), digits.example(2))
    assert groups["conv1"].consumers == [("conv2", 1)]
    assert groups["conv2"].consumers == [("fc1", 4)]  # flatten: 50 channels x 2x2 -> fc1
    assert groups["fc1"].consumers == [("fc2", 1)]
    assert groups["fc2"].blocked == ["its channels are the model's output"]


def test_surgery_is_exact_when_removed_channels_were_zero(digits, tmp_path):
    model = fresh("lenet5", digits)
    zero_channels(model, "conv1", list(range(0, 20, 2)))  # 10 of 20
    zero_channels(model, "conv2", list(range(25)))  # 25 of 50
    zero_channels(model, "fc1", list(range(250, 500)))  # 250 of 500
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5), ctx)
    assert model.conv1.weight.shape == (10, 1, 5, 5)
    assert model.conv2.weight.shape == (25, 10, 5, 5)
    assert model.fc1.weight.shape == (250, 25 * 4)
    assert model.fc2.weight.shape == (10, 250)
    assert ctx.notes["channels"] == {"conv1": "20 -> 10", "conv2": "50 -> 25", "fc1": "500 -> 250"}
    assert ctx.notes["skipped"] == {"fc2": "its channels are the model's output"}
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # The smaller shapes come back from the file without the user re-running anything.
    mz.save(model, tmp_path / "small.mzip")
    loaded = mz.load(tmp_path / "small.mzip")
    assert loaded.conv2.weight.shape == (25, 10, 5, 5) and loaded.fc1.in_features == 100
    assert torch.equal(loaded(x), out)
    assert sum(p.numel() for p in loaded.parameters()) < 0.3 * sum(
        p.numel() for p in fresh("lenet5", digits).parameters()
    )


def test_channel_pruning_after_masks_slices_the_masks(digits):
    model = fresh("lenet300", digits)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(sparsity=0.5, scope="layer"), ctx)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["fc1"]), ctx)
    assert model.fc1.weight.shape == (150, 64) and model.fc2.weight.shape == (100, 150)
    mask = model.fc1.parametrizations.weight[0].mask
    assert mask.shape == (150, 64)
    with torch.no_grad():
        model.fc1.parametrizations.weight.original.fill_(1.0)
    assert torch.equal(model.fc1.weight != 0, mask)  # the mask still holds after surgery


def _resnet(kind: str) -> nn.Module:
    return call_factory(f"{RESNETS}:{kind}").eval()


def test_residual_add_couples_channels_and_stays_exact(digits, tmp_path):
    model = _resnet("residual")
    groups = channel_groups(model, digits.example(2))
    g = groups["stem"]
    assert g is groups["conv_b"] and sorted(g.producers) == ["conv_b", "stem"]
    assert sorted(g.norms) == ["bn_b", "bn_stem"]
    assert sorted(c for c, _ in g.consumers) == ["conv_a", "head"]
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, fold_bn=False), ctx)
    assert model.stem.out_channels == 8 and model.conv_b.out_channels == 8
    assert model.bn_b.num_features == 8 and model.head.in_features == 8 * 64
    assert ["stem", "conv_b"] in ctx.notes["coupled"] or ["conv_b", "stem"] in ctx.notes["coupled"]
    assert model(x).shape == ref.shape
    mz.save(model, tmp_path / "res.mzip")
    loaded = mz.load(tmp_path / "res.mzip", model=_resnet("residual"))
    assert torch.equal(loaded(x), model(x))


def test_residual_surgery_is_exact_when_coupled_channels_are_zero(digits):
    model = _resnet("residual_plain")
    for layer in ("stem", "conv_b"):
        zero_channels(model, layer, list(range(8, 16)))
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["stem"]), make_ctx(digits))
    assert model.stem.out_channels == 8 and model.conv_b.out_channels == 8
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_concatenation_maps_channels_to_their_offsets_and_stays_exact(digits):
    model = _resnet("concat")
    groups = channel_groups(model, digits.example(2))
    left = [m for m in groups["left"].members if m.layer == "head"]
    right = [m for m in groups["right"].members if m.layer == "head"]
    assert (left[0].offset, left[0].repeat) == (0, 64) and right[0].offset == 8
    zero_channels(model, "left", [0, 2, 4, 6])
    zero_channels(model, "right", [1, 3, 5, 7])
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    prune(
        model,
        PruneConfig(pattern="channel", sparsity=0.5, layers=["left", "right"]),
        make_ctx(digits),
    )
    assert model.left.out_channels == 4 and model.head.in_features == 8 * 64
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_magnitude_counts_the_weights_that_read_a_channel(digits):
    """Half of fc1's neurons have the larger incoming weights but nothing reads them (their
    fc2 columns are zero): ranked by both sides of the weights, they are the ones cut, and the
    output does not change. Ranked by incoming weights alone they would be kept."""
    model = fresh("lenet300", digits)
    unread = torch.arange(0, 300, 2)
    with torch.no_grad():
        w = model.fc1.weight
        w.copy_(w / w.abs().sum(1, keepdim=True))  # every neuron's incoming L1 norm 1 ...
        w[unread] *= 1.01  # ... the unread ones a little more
        model.fc2.weight[:, unread] = 0
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["fc1"]), ctx)
    assert model.fc1.out_features == 150
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_output_layer_by_name_is_refused(digits):
    with pytest.raises(UnsupportedError, match="fc3: its channels are the model's output"):
        prune(
            fresh("lenet300", digits),
            PruneConfig(pattern="channel", layers=["fc3"]),
            make_ctx(digits),
        )


def test_structured_finetune_recovers_accuracy(digits):
    model = mz.load_model("zoo:lenet300", data=digits)
    base = mz.evaluate(model, digits, measure_latency=False)["accuracy"]
    ctx = make_ctx(digits)
    prune(
        model,
        PruneConfig(
            pattern="channel",
            sparsity=0.5,
            criterion="taylor",
            schedule="iterative",
            rounds=2,
            epochs=1,
        ),
        ctx,
    )
    assert model.fc1.out_features == 150 and model.fc2.out_features == 50
    assert mz.evaluate(model, digits, measure_latency=False)["accuracy"] >= base - 0.03


def test_global_average_pool_feeds_the_head(digits, tmp_path):
    model = _resnet("global_pool")
    groups = channel_groups(model, digits.example(2))
    assert groups["c2"].consumers == [("head", 1)] and groups["c2"].prunable
    zero_channels(model, "c2", list(range(16)))
    x = digits.example(8)
    with torch.no_grad():
        ref = model(x)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["c2"]), make_ctx(digits))
    assert model.head.in_features == 16
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_resnet_with_downsample_couples_each_stage(digits, tmp_path):
    model = _resnet("mini_resnet")
    groups = channel_groups(model, digits.example(2))
    stage1, stage2 = groups["stem"], groups["layer2.0.down.0"]
    assert sorted(stage1.producers) == ["layer1.0.conv2", "layer1.1.conv2", "stem"]
    assert sorted(stage2.producers) == ["layer2.0.conv2", "layer2.0.down.0", "layer2.1.conv2"]
    assert ("layer2.0.down.0", 1) in stage1.consumers and ("fc", 1) in stage2.consumers
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, fold_bn=False), ctx)
    assert model.layer2[0].down[1].num_features == 16 and model.fc.in_features == 16
    assert all(v == 0.5 for v in ctx.notes["layer_sparsity"].values())
    x = digits.example(8)
    mz.save(model, tmp_path / "resnet.mzip")
    back = mz.load(tmp_path / "resnet.mzip", model=lambda: _resnet("mini_resnet"))
    assert torch.equal(back(x), model.eval()(x))


def test_per_channel_parameter_blocks_the_space_before_any_surgery(digits):
    model = _resnet("channel_scale")
    with pytest.raises(UnsupportedError, match=r"conv: mul\(\) combines them with 'scale'"):
        prune(
            model, PruneConfig(pattern="channel", sparsity=0.5, layers=["conv"]), make_ctx(digits)
        )
    assert model.conv.out_channels == 8  # refused up front: the model is untouched


def test_group_norm_loses_whole_groups_and_stays_exact(digits, tmp_path):
    model = _resnet("group_norm")
    groups = channel_groups(model, digits.example(2))
    assert groups["stem"].block == 4 and groups["stem"].norms == ["gn_stem"]
    assert groups["mid"].block == 2 and groups["mid"].sections  # + the grouped conv's 4
    # groups 1 and 3 of the stem's 4 go: their GroupNorm output is its shift, a constant
    # the next convolution takes into its bias
    zero_channels(model, "stem", [4, 5, 6, 7, 12, 13, 14, 15])
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    ctx = make_ctx(digits)
    prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["stem"]), ctx)
    assert (model.gn_stem.num_channels, model.gn_stem.num_groups) == (8, 2)
    assert model.stem.out_channels == 8 and model.mid.in_channels == 8
    assert ctx.notes["block"] == {"stem": 4}
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    # the default selection prunes the middle GroupNorm's space too, in whole groups of 2
    # and the same count from each of the grouped conv's 4 groups
    prune(model, PruneConfig(pattern="channel", sparsity=0.5), make_ctx(digits))
    assert (model.gn_mid.num_channels, model.gn_mid.num_groups) == (8, 4)
    assert model.grouped.in_channels == 8 and model.grouped.groups == 4
    mz.save(model, tmp_path / "gn.mzip")
    loaded = mz.load(tmp_path / "gn.mzip", model=_resnet("group_norm"))
    assert model.gn_stem.num_groups == 1  # selected again: 2 groups of 4 -> 1
    assert loaded.gn_mid.num_groups == 4 and loaded.gn_stem.num_groups == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_group_norm_groups_straddling_a_grouped_conv_block_the_space(digits):
    model = _resnet("group_norm_straddled")
    groups = channel_groups(model, digits.example(2))
    assert groups["mid"].blocked and "straddle" in groups["mid"].blocked[0]
    assert groups["stem"].prunable  # the other GroupNorm's space is untouched
    with pytest.raises(UnsupportedError, match="straddle"):
        prune(model, PruneConfig(pattern="channel", sparsity=0.5, layers=["mid"]), make_ctx(digits))
