"""Unstructured and N:M pruning: criteria, scopes, thresholds, schedules, masks, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import fresh, make_ctx

import modelzip as mz
from modelzip.errors import ConfigError
from modelzip.methods.prune import PruneConfig, prune
from modelzip.nn.constraints import original
from modelzip.ops import pruning
from modelzip.recipe import Recipe

LAYERS = ("fc1", "fc2", "fc3")


def run(model, data, **fields):
    ctx = make_ctx(data)
    out = prune(model, PruneConfig.parse(fields), ctx)
    return out, ctx


def weights(model):
    return {n: getattr(model, n).weight.detach().clone() for n in LAYERS}


def test_global_magnitude_exact_count_and_order(digits):
    model = fresh("lenet300", digits)
    before = weights(model)
    model, ctx = run(model, digits, sparsity=0.8)
    after = weights(model)
    total = sum(w.numel() for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.8 * total)
    # One threshold across layers: every pruned |w| is <= every kept |w|.
    pruned = torch.cat([before[n][after[n] == 0].abs() for n in LAYERS])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in LAYERS])
    assert pruned.max() <= kept.min()
    assert set(ctx.notes["layer_sparsity"]) == set(LAYERS)


def test_per_layer_map_gives_each_layer_its_target(digits):
    model, ctx = run(
        fresh("lenet300", digits), digits, sparsity={"default": 0.5, "fc3": 0.2}, scope="layer"
    )
    assert ctx.notes["layer_sparsity"] == {"fc1": 0.5, "fc2": 0.5, "fc3": 0.2}


def test_masks_survive_finetuning(digits):
    model, ctx = run(fresh("lenet300", digits), digits, sparsity=0.9, scope="layer")
    zero = {n: w == 0 for n, w in weights(model).items()}
    before = weights(model)
    # Weight decay and momentum push every stored value; the masked ones must stay zero.
    ctx.trainer.fit(model, digits.train, epochs=1, lr=1e-2, optimizer="sgd", weight_decay=0.1)
    after = weights(model)
    for n in LAYERS:
        assert torch.all(after[n][zero[n]] == 0)
        assert not torch.equal(after[n][~zero[n]], before[n][~zero[n]])  # others did train
        assert torch.any(original(getattr(model, n), "weight")[zero[n]] != 0)  # optimizer moved


def test_repeated_pruning_never_revives_weights(digits):
    model, _ = run(fresh("lenet300", digits), digits, sparsity=0.5, criterion="random")
    first = {n: w == 0 for n, w in weights(model).items()}
    model, _ = run(model, digits, sparsity=0.8, criterion="random")
    for n, w in weights(model).items():
        assert torch.all(w[first[n]] == 0)
    total = sum(w.numel() for w in weights(model).values())
    assert sum(int((w == 0).sum()) for w in weights(model).values()) == round(0.8 * total)


def test_random_criterion_is_seeded(digits):
    a, _ = run(fresh("lenet300", digits), digits, sparsity=0.5, criterion="random", scope="layer")
    b, _ = run(fresh("lenet300", digits), digits, sparsity=0.5, criterion="random", scope="layer")
    c = fresh("lenet300", digits)
    prune(c, PruneConfig(sparsity=0.5, criterion="random", scope="layer"), make_ctx(digits, 1))
    assert torch.equal(a.fc1.weight == 0, b.fc1.weight == 0)
    assert not torch.equal(a.fc1.weight == 0, c.fc1.weight == 0)


def test_taylor_prunes_lowest_weight_times_gradient(digits):
    model = fresh("lenet300", digits)
    x, y = next(iter(digits.val))
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, [model.fc2.weight])[0]
    score = (model.fc2.weight.detach() * g).abs()
    model, _ = run(
        model,
        digits,
        sparsity=0.6,
        criterion="taylor",
        scope="layer",
        layers=["fc2"],
        calibration_batches=1,
    )
    pruned = model.fc2.weight.detach() == 0
    assert int(pruned.sum()) == round(0.6 * score.numel())
    assert score[pruned].max() <= score[~pruned].min()


@pytest.mark.parametrize(("rule", "quality"), [("std", 0.7), ("median", 1.0)])
def test_threshold_rules(digits, rule, quality):
    model = fresh("lenet300", digits)
    w = model.fc1.weight.detach().clone()
    model, _ = run(model, digits, threshold={"rule": rule, "quality": quality})
    stat = w.std() if rule == "std" else w.abs().median()
    assert torch.equal(model.fc1.weight.detach() == 0, w.abs() <= quality * stat)


def test_nm_pattern_holds_exactly_for_linear_and_conv(digits):
    model, ctx = run(fresh("lenet5", digits), digits, pattern="2:4")
    assert "conv1" in ctx.notes["skipped"]  # 1 input channel: reported, not silently skipped
    conv = model.conv2.weight.detach()  # (50, 20, 5, 5): groups of 4 along input channels
    groups = (conv.movedim(1, -1).reshape(-1, 4) != 0).sum(1)
    assert torch.all(groups == 2)
    for name in ("fc1", "fc2"):
        w = getattr(model, name).weight.detach()
        assert torch.all((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2)


def test_nm_keeps_the_largest_in_each_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.2, 0.9]])
    assert pruning.nm_keep(scores, 2, 4).tolist() == [[1, 0, 1, 0, 1, 0, 0, 1]]
    assert pruning.nm_keep(scores, 1, 8).sum() == 1


def test_cubic_schedule_matches_zhu_gupta():
    s = [
        pruning.cubic_sparsity(t, final=0.9, initial=0.0, begin=0, end=100)
        for t in (0, 50, 100, 150)
    ]
    assert s[0] == 0.0 and s[2] == 0.9 and s[3] == 0.9
    assert s[1] == pytest.approx(0.9 * (1 - 0.5**3))


def test_gradual_and_iterative_reach_target_and_keep_accuracy(digits):
    base = mz.load_model("zoo:lenet300", data=digits)
    acc0 = mz.evaluate(base, digits, measure_latency=False)["accuracy"]
    for fields in (
        {"schedule": "gradual", "epochs": 2},
        {"schedule": "iterative", "rounds": 2, "epochs": 1},
    ):
        model = mz.load_model("zoo:lenet300", data=digits)
        model, ctx = run(model, digits, sparsity=0.8, **fields)
        sizes = {n: getattr(model, n).weight.numel() for n in LAYERS}
        total = sum(ctx.notes["layer_sparsity"][n] * sizes[n] for n in LAYERS)
        assert total / sum(sizes.values()) == pytest.approx(0.8, abs=1e-4)
        assert mz.evaluate(model, digits, measure_latency=False)["accuracy"] >= acc0 - 0.05


def test_pruned_model_round_trips_through_mzip(digits, tmp_path):
    model, _ = run(fresh("lenet300", digits), digits, sparsity=0.9)
    mz.save(model, tmp_path / "p.mzip")
    loaded = mz.load(tmp_path / "p.mzip")
    x = digits.example(8)
    for n in LAYERS:
        assert torch.equal(getattr(loaded, n).weight, getattr(model, n).weight.detach())
    assert torch.equal(loaded(x), model(x))


def test_compress_reports_layer_sparsity(digits):
    model = mz.load_model("zoo:lenet300", data=digits)
    recipe = Recipe.from_dict([{"method": "prune", "sparsity": 0.7}])
    result = mz.compress(model, digits, recipe, measure_latency=False)
    notes = result["stages"][0]["notes"]
    assert set(notes["layer_sparsity"]) == set(LAYERS)
    assert result["compressed"]["sparsity"] > 0.69


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"sparsity": 1.0}, "sparsity must be in [0, 1), got 1.0"),
        ({"sparsity": -0.1}, "got -0.1"),
        ({"sparsity": {"default": 0.5, "fc1": 1.5}}, "got 1.5"),
        ({"pattern": "4:2"}, "1 <= N <= M"),
        ({"pattern": "blocks"}, "unstructured, channel, N:M"),
        ({"criterion": "hessian"}, "'magnitude', 'taylor', 'random' or 'bn_scale'"),
        ({"threshold": {"rule": "std"}, "sparsity": 0.5}, "either sparsity or threshold"),
        ({"threshold": {"rule": "mean"}}, "'std' or 'median'"),
        ({"pattern": "2:4", "sparsity": 0.3}, "fixes the sparsity"),
        ({"schedule": "gradual", "epochs": 0}, "epochs must be >= 1"),
        ({"sparsitty": 0.5}, "did you mean 'sparsity'"),
        ({"epochs": 5}, "'epochs' applies only with schedule iterative or gradual"),
        ({"norm": "l2"}, "'norm' applies only with pattern channel"),
        ({"criterion": "bn_scale"}, "bn_scale ranks whole channels: it needs pattern channel"),
        ({"fold_bn": False}, "'fold_bn' applies only with pattern channel"),
    ],
)
def test_bad_config_is_one_clear_error(fields, needle):
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict([{"method": "prune", **fields}])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_layer_pattern_matching_nothing_lists_layers(digits):
    with pytest.raises(ConfigError, match=r"'fc9' matches no layer; layers: fc1, fc2, fc3"):
        run(fresh("lenet300", digits), digits, layers=["fc9"])
    with pytest.raises(ConfigError, match=r"matches no layer; layers: fc1, fc2, fc3"):
        run(fresh("lenet300", digits), digits, sparsity={"default": 0.5, "conv*": 0.1})


def test_builtin_pruning_recipes_load():
    for name in ("prune-gradual", "prune-channels"):
        stages = Recipe.load(name).stages
        assert stages[0].method == "prune" and stages[-1].method == "finetune"


class _SeqLSTM(torch.nn.Module):
    """A user's recurrent model: its one weight layer the built-ins prune is the output head."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.lstm(x.view(-1, 8, 8))
        return self.head(out[:, -1])


@pytest.mark.parametrize("recipe", ["quick", "prune-gradual"])
def test_a_model_whose_only_prunable_layer_is_kept_dense_runs_every_recipe(digits, recipe):
    # used to fail with ZeroDivisionError in the global ranking of zero layers: these recipes
    # keep the output layer and an LSTM's recurrent matrices dense, so nothing is ranked
    torch.manual_seed(0)
    model = _SeqLSTM()
    out = mz.compress(model, digits, recipe, measure_latency=False, stage_metrics=False)
    prune_stage = next(s for s in out["stages"] if s["method"] == "prune")
    assert any("no layer to prune" in w for w in prune_stage["notes"]["warnings"])
    assert out["ratio"] > 1


def test_the_default_recipe_prunes_an_lstms_recurrent_matrices(digits):
    torch.manual_seed(0)
    out = mz.compress(_SeqLSTM(), digits, "default", measure_latency=False, stage_metrics=False)
    prune_stage = next(s for s in out["stages"] if s["method"] == "prune")
    pruned = {n for n, v in prune_stage["notes"]["layer_sparsity"].items() if v > 0}
    assert pruned and all(n.startswith("lstm.") for n in pruned), pruned


def test_global_magnitude_ranks_weights_as_their_batchnorm_scales_them(digits):
    # the middle convolution's weights are 1000x smaller than the others' and its BatchNorm
    # scales them back up (as a depthwise convolution's does in EfficientNet): by raw
    # magnitude a global 80% takes every one of them and cuts the network in two
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 10),
    ).eval()
    with torch.no_grad():
        model[3].weight.mul_(1e-3)
        model[4].weight.fill_(1000.0)  # gamma / sqrt(var + eps): 1000
    _, ctx = run(model, digits, sparsity=0.8, scope="global")
    notes = ctx.notes
    sparsity = notes["layer_sparsity"]
    assert 0.1 < sparsity["3"] < 0.9 and "warnings" not in notes
    assert sparsity["7"] > 0.8  # the Linear gives up more instead
