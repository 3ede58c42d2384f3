from typing import ClassVar

import pytest

from modelzip.config import MethodConfig
from modelzip.errors import RecipeError
from modelzip.recipe import Recipe
from modelzip.registry import get_method, methods, register


def test_builtin_methods_registered():
    assert {"prune", "quantize", "finetune"} <= set(methods())
    m = get_method("prune")
    assert m.config.method == "prune" and callable(m.apply)


def test_a_new_method_plugs_in_without_touching_the_pipeline(lenet300, digits):
    from modelzip.context import Context
    from modelzip.pipeline import run
    from modelzip.train import Trainer

    class ScaleConfig(MethodConfig):
        method: ClassVar[str] = "test-scale"
        factor: float = 1.0

    @register(ScaleConfig)
    def scale(model, cfg, ctx):
        """Multiply the last layer's weights (a test method)."""
        model.fc3.weight.data *= cfg.factor
        ctx.notes["factor"] = cfg.factor
        return model

    recipe = Recipe.from_yaml("stages:\n  - method: test-scale\n    factor: 0.0\n")
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    model, stages = run(lenet300, recipe, ctx)
    assert float(model.fc3.weight.detach().abs().sum()) == 0.0
    assert stages[0]["notes"] == {"factor": 0.0}
    assert stages[0]["nonzero"] < stages[0]["params"]


def test_duplicate_registration_is_refused():
    class DupConfig(MethodConfig):
        method: ClassVar[str] = "finetune"

    with pytest.raises(ValueError, match="already registered"):
        register(DupConfig)(lambda m, c, x: m)


def test_unknown_method_error():
    with pytest.raises(RecipeError, match="valid methods"):
        get_method("nope")
