"""The cluster method and the Codebook parametrization (Deep Compression §3)."""

import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.context import Context
from modelzip.errors import ConfigError, UnsupportedError
from modelzip.nn.codebook import Codebook
from modelzip.nn.constraints import constraints_of
from modelzip.pipeline import run
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer


@pytest.fixture(scope="module")
def data() -> mz.zoo.data.DataBundle:
    return mz.load_data("digits")


def _model(data):
    torch.manual_seed(0)
    m = mz.load_model("zoo:lenet300", data=data)
    return m


def _ctx(data) -> Context:
    return Context(data=data, trainer=Trainer(progress=False))


def test_centroid_gradient_is_the_sum_of_member_gradients() -> None:
    idx = torch.tensor([[1, 2, 0], [2, 2, 1]])
    cb = Codebook(idx, torch.tensor([-0.5, 0.25]), zero_slot=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (cb(torch.zeros(2, 3)) * upstream).sum().backward()
    assert torch.equal(cb.codebook.grad, torch.tensor([1.0 + 6.0, 2.0 + 4.0 + 5.0]))


def test_finetune_moves_centroids_keeps_indices_and_zeros(data) -> None:
    model = _model(data)
    recipe = Recipe.from_dict(
        {"stages": [{"method": "prune", "sparsity": 0.8}, {"method": "cluster", "bits": 3}]}
    )
    model, _ = run(model, recipe, _ctx(data))
    cbs = {n: constraints_of(m, "weight")[-1] for n, m in model.named_children() if "fc" in n}
    assert all(isinstance(c, Codebook) for c in cbs.values())
    # the optimizer of Trainer.fit sees the centroids (model.parameters() includes them)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(c.codebook) in trainable for c in cbs.values())
    before = {n: (c.indices.clone(), c.codebook.detach().clone()) for n, c in cbs.items()}
    zeros = {n: getattr(model, n).weight == 0 for n in cbs}
    Trainer(progress=False).fit(model, data.train, epochs=1, lr=1e-3)
    for n, c in cbs.items():
        idx0, cb0 = before[n]
        assert torch.equal(c.indices, idx0)
        assert not torch.equal(c.codebook.detach(), cb0)
        w = getattr(model, n).weight
        assert bool((w[zeros[n]] == 0).all())
        assert torch.unique(w[w != 0]).numel() <= 8
        # weights are exactly the table values at their indices
        assert torch.equal(w.detach(), c.table().detach()[c.indices.long()])


def test_shared_codebook_is_one_parameter(data) -> None:
    model = _model(data)
    cfg = get_method("cluster").config.parse({"bits": 4, "shared": True})
    get_method("cluster").apply(model, cfg, _ctx(data))
    params = {
        id(constraints_of(m, "weight")[-1].codebook) for n, m in model.named_children() if "fc" in n
    }
    assert len(params) == 1


def test_per_layer_bits_map(data) -> None:
    model = _model(data)
    cfg = get_method("cluster").config.parse(
        {"bits": {"default": 2, "fc3": 5}, "algorithm": "optimal"}
    )
    get_method("cluster").apply(model, cfg, _ctx(data))
    assert torch.unique(model.fc1.weight).numel() <= 4
    assert 4 < torch.unique(model.fc3.weight).numel() <= 32


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, "four"])
def test_bad_bits_is_a_clear_error(bits) -> None:
    with pytest.raises(ConfigError, match="bits"):
        get_method("cluster").config.parse({"bits": bits})
    with pytest.raises(ConfigError, match="bits"):
        get_method("cluster").config.parse({"bits": {"default": 4, "fc3": bits}})


def test_nan_weights_are_reported(data) -> None:
    model = _model(data)
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    cfg = get_method("cluster").config.parse({"bits": 4})
    with pytest.raises(UnsupportedError, match="fc2.weight"):
        get_method("cluster").apply(model, cfg, _ctx(data))


def test_codebook_rejects_out_of_range_indices() -> None:
    with pytest.raises(ValueError):
        Codebook(torch.tensor([0, 3]), torch.tensor([1.0, 2.0]), zero_slot=True)
    assert isinstance(
        Codebook(torch.tensor([0, 2]), nn.Parameter(torch.ones(2)), zero_slot=True).codebook,
        nn.Parameter,
    )


def test_per_row_and_per_group_codebooks_round_trip_and_beat_one_codebook(lenet300, digits):
    from modelzip import mzip
    from modelzip.nn.codebook import RowCodebook

    whole, _ = run_cluster(lenet300, digits, bits=3)
    rows, notes = run_cluster(lenet300, digits, bits=3, per="row")
    groups, gnotes = run_cluster(lenet300, digits, bits=3, per="group", group_size=32)
    for name in ("fc1", "fc2"):
        assert notes["layers"][name]["per"] == "row"
        assert notes["layers"][name]["sqnr_db"] > whole_sqnr(whole, lenet300, name)
        assert gnotes["layers"][name]["sqnr_db"] > notes["layers"][name]["sqnr_db"]
        c = constraints_of(getattr(rows, name), "weight")[-1]
        assert isinstance(c, RowCodebook) and c.codebook.shape[1] == 8
        assert torch.equal(c.codebook, c.codebook.half().float())  # 16-bit tables, exact
        w = getattr(rows, name).weight.detach()
        assert all(len(torch.unique(r)) <= 8 for r in w)
    back, header = mzip.from_bytes(mzip.to_bytes(groups))
    assert header["tensors"]["fc1.weight"]["kind"] == "row-codebook"
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(back, name).weight, getattr(groups, name).weight.detach())


def whole_sqnr(model, base, name):
    from modelzip.ops import affine

    w0 = getattr(base, name).weight.detach()
    return affine.sqnr_db(w0, getattr(model, name).weight.detach())


def run_cluster(model, data, **fields):
    import copy

    m = get_method("cluster")
    ctx = _ctx(data)
    return m.apply(copy.deepcopy(model), m.config.parse(fields), ctx), ctx.notes
