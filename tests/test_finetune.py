"""``finetune``: a model whose training collapsed to a constant output is named in the notes."""

from __future__ import annotations

import torch
from support import make_ctx
from torch import nn

from modelzip.registry import get_method


def _finetune(model, digits, lr=1e-3):
    cfg = get_method("finetune").config.parse({"epochs": 1, "lr": lr})
    ctx = make_ctx(digits)
    get_method("finetune").apply(model, cfg, ctx)
    return ctx.notes


def test_a_collapsed_model_is_named_in_the_notes(digits):
    # a ReLU on the logits with every pre-activation far below 0: the logits stay 0, no
    # gradient reaches the weights, and the loss is ln(10) whatever the input
    head = nn.Linear(64, 10)
    with torch.no_grad():
        head.bias.fill_(-1e4)
    notes = _finetune(nn.Sequential(nn.Flatten(), head, nn.ReLU()), digits)
    assert "collapsed" in notes and "ln(10)" in notes["collapsed"]


def test_a_model_that_learns_is_not(digits):
    notes = _finetune(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, lr=1e-2)
    assert "collapsed" not in notes and notes["train_loss"] < 2.1  # ln(10) = 2.303
