"""``gptq`` options beyond plain GPTQ: ``tune_scales`` (codes fixed, scales/biases/norms tuned
to the float model's outputs) and mixed precision by end-to-end effect."""

from __future__ import annotations

import copy

import pytest
import torch
from support import CalibrationOnly
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.context import Context
from modelzip.embed import embed
from modelzip.errors import ConfigError
from modelzip.methods import _gptq_tune as tuning
from modelzip.methods._gptq_budget import end_to_end_sensitivity, sensitivity
from modelzip.methods._gptq_calib import call_order
from modelzip.nn.constraints import constraints_of
from modelzip.nn.lowbit import GroupCodes
from modelzip.registry import get_method
from modelzip.testing import user_models as um
from modelzip.train import Trainer


def run(model, batches, **fields):
    method = get_method("gptq")
    ctx = Context(data=CalibrationOnly(batches), trainer=Trainer(progress=False))  # type: ignore[arg-type]
    return method.apply(model, method.config.parse(fields), ctx), ctx.notes


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = um.write_tiny_bert(tmp_path_factory.mktemp("bert"), seed=3)
    data = mz.load_data("sentences")
    return mz.load_model(str(folder)).eval(), data


def _codes(model):
    out = {}
    for name, mod in model.named_modules():
        for c in constraints_of(mod, "weight") if hasattr(mod, "parametrizations") else []:
            if isinstance(c, GroupCodes):
                out[name] = c
    return out


def test_tuning_lowers_calibration_and_held_out_error_with_codes_fixed(tiny_bert):
    base, data = tiny_bert
    calib = [x for x, _ in data.val][:2]
    held_out = [x for x, _ in data.test][:2]
    refs = tuning.reference_outputs(base, calib)
    held_refs = tuning.reference_outputs(base, held_out)
    assert refs is not None and held_refs is not None
    fields = {"bits": 3, "group_size": 32}
    plain, _ = run(copy.deepcopy(base), calib, **fields)
    tuned, notes = run(copy.deepcopy(base), calib, tune_scales=40, tune_lr=3e-3, **fields)
    t = notes["tune"]
    assert t["kept"] and t["steps"] == 40 and t["group_scales"] > 0
    # measured here, independently of the notes: the tuned model is closer to fp32
    e_plain = tuning.output_error(plain, calib, refs)
    e_tuned = tuning.output_error(tuned, calib, refs)
    assert t["error_before"] == pytest.approx(e_plain, rel=1e-3)
    assert e_tuned < 0.8 * e_plain
    assert tuning.output_error(tuned, held_out, held_refs) < tuning.output_error(
        plain, held_out, held_refs
    )
    # the integer codes are GPTQ's, untouched; the scales moved and stay fp16-exact
    a, b = _codes(plain), _codes(tuned)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[n].qdata, b[n].qdata) for n in a)
    assert any(not torch.equal(a[n].scale, b[n].scale) for n in a)
    assert all(torch.equal(b[n].scale, b[n].scale.half().float()) for n in b)
    assert all(bool((b[n].scale > 0).all()) for n in b)


def test_tuned_file_round_trips_and_embeds_identically(tiny_bert, tmp_path):
    base, data = tiny_bert
    calib = [x for x, _ in data.val][:2]
    tuned, notes = run(copy.deepcopy(base), calib, bits=4, group_size=32, tune_scales=10)
    assert notes["tune"]["steps"] == 10
    path = tmp_path / "t.mzip"
    mzip.save(tuned, path)
    loaded = mz.load(path)
    x = data.example(8)
    with torch.no_grad():
        assert torch.equal(loaded(x), tuned(x))
    texts = ["A tuned model keeps its codes.", "The loader rebuilds the same weights."]
    assert (embed(str(path), texts, frozen=False) == embed(tuned, texts, frozen=False)).all()


def test_tuning_that_cannot_help_is_reverted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8))
    x = [torch.randn(256, 64)]
    refs = tuning.reference_outputs(model, x)
    q, _ = run(copy.deepcopy(model), x, bits=4, group_size=32)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    assert refs is not None
    notes = tuning.tune(q, x, refs, steps=3, lr=10.0)  # a step size that can only hurt
    assert not notes["kept"]
    after = q.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Branch(nn.Module):
    """A head on a residual stream with a weak branch: the branch's rounding error reaches the
    output scaled by 0.05, whatever its own relative error."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(64, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + 0.05 * torch.tanh(self.branch(x)))


def test_end_to_end_sensitivity_sees_what_a_layer_costs_the_model():
    torch.manual_seed(0)
    model = _Branch()
    layers = {"branch": model.branch, "head": model.head}
    x = torch.randn(512, 64)
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    e2e = end_to_end_sensitivity(model, layers, x, [2, 4, 8], 32)
    assert e2e is not None
    assert all(torch.equal(layers[n].weight, weights[n]) for n in layers)  # put back exactly
    for n in layers:
        assert e2e[n][2] > e2e[n][4] > e2e[n][8] >= 0
    _, stats = call_order(model, layers, [x])
    own = {n: sensitivity(weights[n], stats[n], [2, 4, 8], 32) for n in layers}
    # by its own output error the branch looks as sensitive as the head; through the model
    # its error is a small share of the head's
    assert own["branch"][2] > 0.5 * own["head"][2]
    assert e2e["branch"][2] < 0.05 * e2e["head"][2]


def test_average_bits_by_end_to_end_effect_is_noted_and_within_budget(tiny_bert):
    base, data = tiny_bert
    calib = [x for x, _ in data.val][:2]
    _, notes = run(
        copy.deepcopy(base), calib, average_bits=3.5, bits_choices=[3, 4, 5], group_size=32
    )
    assert notes["sensitivity"] == "end_to_end"
    chosen = {n: r["bits"] for n, r in notes["layers"].items() if "bits" in r}
    sizes = {n: base.get_submodule(n).weight.numel() for n in chosen}
    avg = sum(chosen[n] * sizes[n] for n in chosen) / sum(sizes.values())
    assert avg <= 3.5 + 1e-9 and notes["average_bits"] == pytest.approx(avg, abs=1e-3)
    assert len(set(chosen.values())) > 1


def test_cosine_schedule_tunes_and_bad_schedules_are_refused(tiny_bert):
    base, data = tiny_bert
    calib = [x for x, _ in data.val][:2]
    refs = tuning.reference_outputs(base, calib)
    assert refs is not None
    fields = {"bits": 3, "group_size": 32, "tune_scales": 30, "tune_lr": 3e-3}
    plain, _ = run(copy.deepcopy(base), calib, bits=3, group_size=32)
    tuned, notes = run(copy.deepcopy(base), calib, tune_schedule="cosine", **fields)
    assert notes["tune"]["schedule"] == "cosine" and notes["tune"]["kept"]
    assert tuning.output_error(tuned, calib, refs) < 0.8 * tuning.output_error(plain, calib, refs)
    with pytest.raises(ConfigError, match="tune_schedule"):
        get_method("gptq").config.parse({"tune_schedule": "linear"})
    with pytest.raises(ValueError, match="schedule must be"):
        tuning.tune(tuned, calib, refs, steps=1, lr=1e-3, schedule="step")
