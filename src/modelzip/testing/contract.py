"""The contract every compression method keeps, as a pytest suite to subclass.

Example:
    >>> class TestPrune(MethodContract):           # doctest: +SKIP
    ...     stage = {"method": "prune", "sparsity": 0.5}
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from modelzip import api, mzip
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.pipeline import run
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.train import Trainer


class MethodContract:
    """Subclass with ``stage`` (one recipe stage as a dict) to check a method's contract:
    its config round-trips and rejects unknown fields, and the model it returns still
    classifies real data, survives a .mzip round trip with identical outputs, and reports
    stage metrics."""

    stage: ClassVar[dict[str, Any]] = {}
    model_spec: ClassVar[str] = "zoo:lenet300"
    data_spec: ClassVar[str] = "digits"
    #: Accuracy on the digits test split the compressed model must keep.
    accuracy_floor: ClassVar[float] = 0.8
    #: Max |difference| between outputs before and after the .mzip round trip.
    round_trip_atol: ClassVar[float] = 0.0

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls):
        return api.load_data(cls.data_spec)

    @pytest.fixture(scope="class")
    @classmethod
    def compressed(cls, data):
        model = api.load_model(cls.model_spec, data=data)
        ctx = Context(data=data, trainer=Trainer(progress=False))
        recipe = Recipe.from_dict({"stages": [dict(cls.stage)]})
        return run(model, recipe, ctx)

    def test_config_round_trips(self):
        cfg = Recipe.from_dict({"stages": [dict(self.stage)]}).stages[0]
        again = Recipe.from_dict({"stages": [cfg.to_dict()]}).stages[0]
        assert again == cfg

    def test_unknown_field_is_rejected(self):
        method = get_method(self.stage["method"])
        with pytest.raises(ConfigError, match="unknown field 'no_such_option'"):
            method.config.parse({"no_such_option": 1})

    def test_model_still_classifies(self, compressed, data):
        model, stages = compressed
        assert stages[0]["accuracy"] >= self.accuracy_floor
        assert stages[0]["method"] == self.stage["method"]

    def test_mzip_round_trip_keeps_outputs(self, compressed, data):
        model, _ = compressed
        loaded, _ = mzip.from_bytes(mzip.to_bytes(model))
        x = data.example(32)
        with torch.no_grad():
            a, b = model.eval()(x), loaded(x)
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= self.round_trip_atol
