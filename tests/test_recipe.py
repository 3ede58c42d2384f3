import pytest
import torch
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


# ------------------------------------------------- every built-in recipe fits every model

MODELS = (
    "lenet300",
    "lenet5",
    "residual_cnn",
    "concat_net",
    "depthwise_cnn",
    "tabular_mlp",
    "torch_transformer",
    "lstm_classifier",
)
HEADS = {
    "lenet300": "fc3",
    "lenet5": "fc2",
    "residual_cnn": "head",
    "concat_net": "head",
    "depthwise_cnn": "classifier",
    "tabular_mlp": "5",
    "torch_transformer": "head",
    "lstm_classifier": "head",
}


def _untrained(name: str):
    from modelzip.testing import user_models as um
    from modelzip.zoo.models import zoo_model

    if name in ("lenet300", "lenet5"):
        return zoo_model(name, (1, 8, 8), 10), torch.rand(2, 1, 8, 8)
    if name == "tabular_mlp":
        return um.tabular_mlp(), torch.rand(2, 30)
    return getattr(um, name)(), torch.rand(2, 1, 8, 8)


@pytest.mark.parametrize("name", MODELS)
def test_builtin_layer_rules_resolve_on_every_model_by_role_and_size(name):
    """No built-in recipe names a layer: every stage's layer rules resolve on every model,
    and the output layer found from a forward pass is the one the rules protect."""
    from modelzip.targets import per_layer, select

    model, x = _untrained(name)
    for recipe in builtin_recipes():
        for cfg in Recipe.load(recipe).stages:
            stage = cfg.to_dict()
            layers = select(model, stage.get("layers"), example=x)
            for key in ("sparsity", "bits", "ratio"):
                value = stage.get(key)
                if isinstance(value, dict):
                    got = per_layer(value, layers, key)
                    if key == "sparsity":  # the head keeps more of its weights
                        assert got[HEADS[name]] < value["default"], (recipe, name, got)
                    if key == "ratio":
                        assert got[HEADS[name]] > value["default"], (recipe, name, got)
    assert list(select(model, ["role:last"], example=x)) == [HEADS[name]]


def _trained(name: str, digits, tmp_path):
    import modelzip as mz
    from modelzip.testing import user_models as um
    from modelzip.train import Trainer

    if name in ("lenet300", "lenet5"):
        return mz.load_model(f"zoo:{name}", data=digits), digits
    data = digits
    if name == "tabular_mlp":
        data = mz.load_data(str(um.write_tabular_npz(tmp_path / "t.npz")))
    model = mz.load_model(f"{um.__file__}:{name}")
    Trainer(progress=False).fit(model, data.train, epochs=15, lr=2e-3)
    return model.eval(), data


def _check_floor(recipe: str, name: str, digits, tmp_path, max_drop: float) -> None:
    import modelzip as mz

    model, data = _trained(name, digits, tmp_path)
    res = mz.compress(model, data, recipe, measure_latency=False)
    base, got = res["baseline"]["accuracy"], res["compressed"]["accuracy"]
    assert got >= base - max_drop, (recipe, name, base, got)
    assert res["ratio"] > 1.4, (recipe, name, res["ratio"])


@pytest.mark.parametrize(
    "recipe, name",
    [("deep-compression", "lenet5"), ("deep-compression", "tabular_mlp"), ("default", "lenet300")],
)
def test_builtin_recipes_keep_accuracy_on_real_data(recipe, name, digits, tmp_path):
    """The recipes as shipped (full epochs) on the cases that used to fail or be cheap to run;
    the whole matrix is the slow test below and benchmarks/recipes.py."""
    _check_floor(recipe, name, digits, tmp_path, max_drop=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("recipe", builtin_recipes())
def test_every_builtin_recipe_on_every_model_keeps_accuracy(recipe, name, digits, tmp_path):
    if recipe == "prune-channels" and name == "residual_cnn":
        pytest.skip("channel pruning of a model with control flow needs the traced graph (#15)")
    if name == "lstm_classifier" and recipe in (
        "prune-channels",
        "prune-gradual",
        "lowrank-distill",
    ):
        # its LSTM's matrices are read whole by PyTorch's kernel: no surgery, no factors, and
        # prune-gradual's global ranking keeps them dense (at 92% it lost 22 points)
        pytest.skip(f"{recipe} leaves an LSTM's recurrent matrices as they are")
    _check_floor(recipe, name, digits, tmp_path, max_drop=0.06)


# ------------------------------------------------------------------ the accuracy budget


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    import modelzip as mz
    from modelzip.testing import user_models as um
    from modelzip.train import Trainer

    data = mz.load_data(str(um.write_tabular_npz(tmp_path_factory.mktemp("b") / "t.npz")))
    model = mz.load_model(f"{um.__file__}:tabular_mlp")
    Trainer(progress=False).fit(model, data.train, epochs=15, lr=2e-3)
    return model.eval(), data


def test_max_drop_is_validated_and_round_trips():
    r = Recipe.from_yaml("max_drop: 0.5\nstages:\n  - method: finetune\n    epochs: 1\n")
    assert r.max_drop == 0.5 and Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.load("default").max_drop == 0.5
    with pytest.raises(RecipeError, match="max_drop"):
        Recipe.from_yaml("max_drop: lots\nstages:\n  - method: finetune\n")


def test_budget_backs_off_until_within_budget_and_says_so(tabular):
    import modelzip as mz

    model, data = tabular
    recipe = Recipe.from_yaml(
        "max_drop: 0.0\nstages:\n  - {method: prune, sparsity: 0.97, scope: layer}\n"
        "  - {method: finetune, epochs: 1}\n"
    )
    res = mz.compress(model, data, recipe, measure_latency=False)
    budget = res["stages"][-1]["notes"]["budget"]
    attempts = budget["attempts"]
    assert len(attempts) >= 2 and attempts[0]["val_drop_pp"] > 0  # 97% costs accuracy
    assert "stage 1 (prune): sparsity 0.97 -> 0.955" in attempts[1]["changes"]
    assert "stage 2 (finetune): epochs 1 -> 2" in attempts[1]["changes"]
    chosen = attempts[budget["chosen_attempt"]]
    if budget["met"]:
        assert chosen["val_drop_pp"] <= 0 and budget["summary"].startswith("within budget")
    else:
        assert budget["summary"].startswith("could not keep accuracy within budget")
        assert chosen["val_drop_pp"] == min(a["val_drop_pp"] for a in attempts)
    # the stages returned are the chosen attempt's, with its (relaxed) configs
    sparsity = res["stages"][0]["config"]["sparsity"]
    assert sparsity == [0.97, 0.955, 0.9325][budget["chosen_attempt"]]
    assert len(chosen["stage_val_drop_pp"]) == 2  # checked after every stage


def test_budget_that_cannot_be_met_is_reported_plainly(tabular):
    import modelzip as mz

    model, data = tabular
    recipe = Recipe.from_yaml(
        "max_drop: 0.0\nstages:\n  - {method: prune, sparsity: 0.999, scope: layer}\n"
    )
    res = mz.compress(model, data, recipe, measure_latency=False)
    budget = res["stages"][-1]["notes"]["budget"]
    drops = [a["val_drop_pp"] for a in budget["attempts"]]
    assert len(drops) == 3 and min(drops) > 0 and not budget["met"]  # max relaxations tried
    assert budget["summary"].startswith("could not keep accuracy within budget: best val drop")
    assert budget["attempts"][budget["chosen_attempt"]]["val_drop_pp"] == min(drops)
