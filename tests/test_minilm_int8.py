"""The real all-MiniLM-L6-v2 through the built-in w8a8 path, on real English (under a minute)."""

from __future__ import annotations

import copy

import pytest
import torch

import modelzip as mz
from modelzip.context import Context
from modelzip.eval.retrieval import fidelity
from modelzip.nn.dynamic import DynQuantLinear
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer


@pytest.fixture(scope="module")
def english():
    return mz.load_data("english", batch_size=64)


def test_w8a8_on_real_minilm_keeps_embeddings_and_neighbours(english):
    model = mz.load_model("zoo:minilm").eval()
    # the built-in recipe's own stage, on fewer calibration batches (speed)
    cfg = Recipe.load("w8a8").stages[-1].model_copy(update={"calibration_batches": 2})
    ctx = Context(data=english, trainer=Trainer(progress=False))
    q = get_method("quantize").apply(copy.deepcopy(model), cfg, ctx)
    assert sum(isinstance(m, DynQuantLinear) for m in q.modules()) >= 36
    assert ctx.notes["embeddings"]["encoder.embeddings.word_embeddings"]["bits"] == 8
    x = torch.cat([x for x, _ in list(english.test)[:4]])  # 256 real test sentences
    with torch.inference_mode():
        f = fidelity(q(x), model(x))
    assert f["cosine_mean"] >= 0.998 and f["top10_overlap"] >= 0.9
