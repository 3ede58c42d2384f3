"""Latency measurement: pinned threads, interleaved comparison, the frozen inference form."""

from __future__ import annotations

import torch

from modelzip.eval.latency import compare, inference_form, latency, median_ms, pinned_threads
from modelzip.graph import fold_batchnorm
from modelzip.testing import user_models as um


def test_thread_count_is_pinned_and_restored():
    before = torch.get_num_threads()
    seen = []
    model = torch.nn.Linear(4, 4)

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return model(x)

    median_ms(probe, torch.zeros(1, 4), warmup=1, warmup_s=0, repeats=2, threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pinned_threads(None):
        assert torch.get_num_threads() == before


def test_latency_records_the_thread_count(digits):
    lat = latency(um.tabular_mlp(in_features=64), digits.example(8).flatten(1), 16)
    assert lat["threads"] == 1 and lat["N"] == 16 and lat["b1"] > 0 and lat["bN"] > 0


def test_compare_pairs_rounds_and_gives_the_first_a_speedup_of_one(digits):
    model = um.tabular_mlp(in_features=64).eval()
    r = compare({"a": model, "b": model}, digits.example(8).flatten(1), rounds=3, repeats=3)
    assert r["a"]["speedup"] == 1.0
    assert r["b"]["min_ms"] <= r["b"]["median_ms"] and r["b"]["speedup"] > 0


def test_frozen_and_optimized_forms_compute_the_same_outputs(digits):
    model = um.residual_cnn().eval()
    x = digits.example(8)
    fold_batchnorm(model, x[:2])
    with torch.no_grad():
        ref = model(x)
        for optimize in (False, True):
            out = inference_form(model, x, optimize=optimize)(x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert isinstance(model.stem, torch.nn.Conv2d)  # the model itself is untouched
