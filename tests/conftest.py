"""Shared fixtures: a private baseline cache, the digits data set, and small real models."""

from __future__ import annotations

import os

import pytest
import torch
from support import fresh

import modelzip as mz

# Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never read or write the user's cache of trained baselines.
    os.environ["MODELZIP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits():
    return mz.load_data("digits")


@pytest.fixture(scope="session")
def lenet300_digits_state(digits):
    """A trained LeNet-300-100 on digits (state_dict), trained once per session."""
    model = mz.load_model("zoo:lenet300", data=digits)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def lenet300(digits, lenet300_digits_state):
    """A fresh trained LeNet-300-100 for digits (tests may modify it)."""
    model = fresh("lenet300", digits)
    model.load_state_dict(lenet300_digits_state)
    return model.eval()
