"""LSTM/GRU/RNN: their matrices become child layers, so every weight method reaches them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.nn.rnn import PackedWeight, SplitRNN, split_recurrent
from modelzip.targets import execution_order, select
from modelzip.testing import user_models as um
from modelzip.train import Trainer


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True),
        lambda: nn.LSTM(8, 16, proj_size=4),
        lambda: nn.GRU(8, 16, num_layers=2),
        lambda: nn.RNN(8, 16, nonlinearity="relu", bias=False, batch_first=True),
    ],
    ids=["lstm-bidirectional", "lstm-proj", "gru", "rnn-relu-nobias"],
)
def test_split_rnn_runs_the_same_kernel_on_the_same_values(make):
    torch.manual_seed(0)
    rnn = make()
    split = SplitRNN.from_rnn(rnn)
    assert all(isinstance(m, PackedWeight) for m in split.children())
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        want, got = rnn(x), split(x)
        assert torch.equal(got[0], want[0])
        hx = tuple(torch.randn_like(h) for h in want[1]) if isinstance(want[1], tuple) else None
        if hx is not None:  # an LSTM given its state
            assert torch.equal(split(x, hx)[0], rnn(x, hx)[0])
    with pytest.raises(RuntimeError, match="read by its recurrent layer"):
        next(split.children())(x)


def test_recurrent_role_and_execution_order_see_the_matrices():
    model = um.lstm_classifier()
    assert split_recurrent(model) == {"lstm": "split"}
    x = torch.rand(2, 1, 8, 8)
    assert execution_order(model, x) == [
        "lstm.ih_l0",
        "lstm.hh_l0",
        "lstm.ih_l1",
        "lstm.hh_l1",
        "head",
    ]
    assert list(select(model, ["role:recurrent"], example=x)) == execution_order(model, x)[:4]
    assert list(select(model, ["role:first"], example=x)) == ["lstm.ih_l0"]


@pytest.fixture(scope="module")
def trained(digits):
    model = um.lstm_classifier()
    Trainer(progress=False).fit(model, digits.train, epochs=12, lr=3e-3)
    return model.eval()


@pytest.mark.parametrize(
    "recipe, min_ratio", [("default", 3.0), ("w8a8", 3.0), ("deep-compression", 6.0)]
)
def test_recipes_compress_an_lstm_and_the_file_loads_into_the_users_model(
    recipe, min_ratio, trained, digits, tmp_path
):
    """Before, every recipe left the LSTM's matrices in fp32: 1.2x for all of them."""
    out = tmp_path / "l.mzip"
    res = mz.compress(trained, digits, recipe, out=out, measure_latency=False)
    assert res["split_modules"] == {"lstm": "split"}
    assert res["ratio"] > min_ratio, res["ratio"]
    assert res["compressed"]["accuracy"] >= res["baseline"]["accuracy"] - 0.03
    loaded = mz.load(out, model=um.lstm_classifier())
    x = digits.example(16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), res["model"](x))
    if recipe == "w8a8":  # int8 kernels would replace the layer: the matrices stay 8-bit grids
        notes = next(s["notes"] for s in res["stages"] if s["method"] == "quantize")
        assert "reads this layer's weight directly" in notes["float_activations"]["lstm.hh_l0"]


def test_channel_pruning_says_why_it_leaves_recurrent_matrices(trained, digits):
    from modelzip.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="recurrent layer .* reads it whole"):
        mz.compress(copy.deepcopy(trained), digits, "prune-channels", measure_latency=False)


def test_a_compressed_lstm_exports_to_onnx_and_runs_there(trained, digits, tmp_path):
    from modelzip.cli import main

    mzip = tmp_path / "l.mzip"
    mz.compress(trained, digits, "gptq-4bit", out=mzip, measure_latency=False)
    onnx = tmp_path / "l.onnx"
    spec = f"{um.__file__}:lstm_classifier"
    assert main(["export", str(mzip), "--model", spec, "--onnx", str(onnx)]) == 0
    assert onnx.stat().st_size > 0


def test_a_file_naming_a_huge_recurrent_layer_is_refused_before_building():
    from modelzip.errors import FormatError
    from modelzip.nn.registry import MODULE_TYPES
    from modelzip.nn.specs import build

    spec = {"type": "SplitRNN", "args": {"mode": "LSTM", "input_size": 8, "hidden_size": 8}}
    assert isinstance(build(spec, MODULE_TYPES), SplitRNN)
    for bad in (
        {"num_layers": 10**9},
        {"mode": "os.system"},
        {"mode": "RNN", "nonlinearity": "exec"},
    ):
        with pytest.raises(FormatError, match="cannot build SplitRNN"):
            build({**spec, "args": {**spec["args"], **bad}}, MODULE_TYPES)


def test_sensitivity_and_the_search_space_see_the_recurrent_matrices(trained, digits, tmp_path):
    """They see the layers compress will find, so a searched recipe can name lstm.hh_l0."""
    from modelzip.search.runner import SearchConfig, search
    from modelzip.search.sensitivity import sensitivity

    sens = sensitivity(trained, digits, sparsities=[0.5], progress=False)
    assert {"lstm.ih_l0", "lstm.hh_l1"} <= set(sens["layers"])
    assert isinstance(trained.lstm, nn.LSTM)  # the caller's model is left as it was
    cfg = SearchConfig(
        max_drop=5, trials=1, study=tmp_path, epochs=(1, 1, 1), progress=False,
        sensitivity_seeds=False, anchor=False, confirm=0,
    )  # fmt: skip
    res = search(trained, digits, cfg, model_spec=f"{um.__file__}:lstm_classifier")
    label = "best" if res["met_budget"] else "closest"
    emitted = tmp_path / f"{label}.yaml"
    assert "lstm.hh_l0" in emitted.read_text()
    # compress reruns the emitted policy on the user's (unsplit) model to the same bytes
    rerun = mz.compress(trained, digits, str(emitted), seed=0, measure_latency=False)
    assert rerun["compressed"]["bytes"] == res[label]["bytes"]
