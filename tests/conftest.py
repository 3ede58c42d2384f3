"""Shared fixtures: a private baseline cache and small real models/data."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never read or write the user's cache of trained baselines.
    os.environ["MODELZIP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def digits():
    from modelzip import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def lenet300_digits_state(digits):
    """A trained LeNet-300-100 on digits (state_dict), trained once per session."""
    from modelzip import load_model

    return {k: v.clone() for k, v in load_model("zoo:lenet300", data=digits).state_dict().items()}


@pytest.fixture
def lenet300(digits, lenet300_digits_state):
    """A fresh trained LeNet-300-100 for digits (tests may modify it)."""
    from modelzip.source import ModelSource

    model = ModelSource(
        "zoo", "lenet300", {"in_shape": list(digits.sample_shape), "num_classes": 10}
    ).build()
    model.load_state_dict(lenet300_digits_state)
    return model.eval()
