"""The README's code runs: every recipe block validates, and the Python tour works."""

import re
from pathlib import Path

import pytest

from modelzip.recipe import Recipe

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
YAML_BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if "stages:" in b]


def test_readme_has_recipes_for_every_method_family():
    methods = {s.method for b in YAML_BLOCKS for s in Recipe.from_yaml(b).stages}
    assert methods >= {
        "prune",
        "finetune",
        "quantize",
        "qat",
        "cluster",
        "encode",
        "lowrank",
        "distill",
    }


@pytest.mark.parametrize("block", YAML_BLOCKS)
def test_readme_recipe_validates(block):
    assert Recipe.from_yaml(block).stages


def test_readme_python_tour_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    ratio, base_acc, acc = capsys.readouterr().out.split("\n")[0].split()
    assert float(ratio) > 5 and float(acc) > 0.85
    assert (tmp_path / "lenet.mzip").is_file()


def test_readme_own_model_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = next(b for b in blocks if "model=MyNet()" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True"
    assert (tmp_path / "mine.mzip").is_file()
