import pytest
from pydantic import ValidationError

from modelzip.errors import ConfigError, RecipeError
from modelzip.recipe import Recipe, builtin_recipes


def test_builtin_recipes_validate_and_round_trip():
    names = builtin_recipes()
    assert {"default", "quick"} <= set(names)
    for name in names:
        r = Recipe.load(name)
        assert r.stages
        again = Recipe.from_yaml(r.to_yaml())
        assert again.to_dict() == r.to_dict()


def test_yaml_stages_become_typed_configs():
    r = Recipe.from_yaml(
        """
stages:
  - method: prune
    sparsity: {default: 0.9, fc3: 0.5}
    scope: layer
  - method: finetune
    epochs: 2
"""
    )
    prune, ft = r.stages
    assert prune.method == "prune" and prune.scope == "layer"
    assert prune.sparsity == {"default": 0.9, "fc3": 0.5}
    assert ft.epochs == 2 and ft.lr == pytest.approx(1e-3)
    with pytest.raises(ValidationError):  # frozen: runtime state never lives on a config
        ft.epochs = 3


def test_typo_in_field_names_the_field_and_choices():
    with pytest.raises(ConfigError) as exc:
        Recipe.from_yaml("stages:\n  - method: prune\n    sparsty: 0.5\n")
    msg = str(exc.value)
    assert "'sparsty'" in msg and "did you mean 'sparsity'" in msg and "scope" in msg
    assert "\n" not in msg


def test_unknown_method_suggests_and_lists():
    with pytest.raises(RecipeError) as exc:
        Recipe.from_yaml("stages:\n  - method: prnue\n")
    assert "did you mean 'prune'" in str(exc.value)
    assert "finetune" in str(exc.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("stages: []", "non-empty"),
        ("stage:\n  - method: prune", "unknown key 'stage'"),
        ("stages:\n  - sparsity: 0.5", "needs a 'method'"),
        ("stages: [unclosed", "invalid YAML"),
        ("stages:\n  - method: prune\n    sparsity: 1.5", "sparsity"),
        ("stages:\n  - method: finetune\n    epochs: -1", "epochs"),
    ],
)
def test_bad_recipes_are_one_line_errors(text, fragment):
    with pytest.raises((RecipeError, ConfigError)) as exc:
        Recipe.from_yaml(text)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_recipe_name_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'default'"):
        Recipe.load("defualt")
    with pytest.raises(RecipeError, match="not found"):
        Recipe.load(str(tmp_path / "nope.yaml"))
