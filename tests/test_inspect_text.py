"""``modelzip inspect`` reads at 80 columns: no name cut, numbers that add up, --json unchanged."""

from __future__ import annotations

import json
import re

import pytest
import torch
from support import fresh

import modelzip as mz
from modelzip import mzip
from modelzip.cli import main
from modelzip.codec.format import write_atomic
from modelzip.codec.inspect import inspect_bytes, layer_of
from modelzip.nn.constraints import AffineQuant, Mask, constrain
from modelzip.report.console import format_inspect, wrap_name
from modelzip.testing import user_models as um

LONG_NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.projection_with_a_deliberately_long_descriptive_name = nn.Linear(8, 16)
        self.output_projection_back_to_the_model_width = nn.Linear(16, 8)

    def forward(self, x):
        return self.output_projection_back_to_the_model_width(
            torch.relu(self.projection_with_a_deliberately_long_descriptive_name(x))
        )


class LongNames(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder_stage_with_a_long_name = nn.ModuleDict(
            {"residual_block_number_zero": Block(), "residual_block_number_one": Block()}
        )
        self.classifier_head_that_maps_features_to_ten_classes_of_digits_and_more = nn.Linear(
            8, 10
        )

    def forward(self, x):
        x = x.flatten(1)[:, :8]
        for block in self.encoder_stage_with_a_long_name.values():
            x = x + block(x)
        return self.classifier_head_that_maps_features_to_ten_classes_of_digits_and_more(x)


def build():
    torch.manual_seed(0)
    return LongNames()
"""


def _unwrap(text: str) -> str:
    """Undo the name wrapping: a line ending in '.' continues on the next (4-space) line."""
    return re.sub(r"\.\n\s+", ".", text)


def _check_80(text: str, info: dict) -> None:
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in text and "..." not in text
    flat = _unwrap(text)
    starts = {line.strip().split(" ")[0] for line in flat.splitlines() if line.strip()}
    for t in info["tensors"]:
        assert layer_of(t["name"]) in starts, (t["name"], text)


def _quantized_lenet300(digits) -> torch.nn.Module:
    model = fresh("lenet300", digits)
    w = model.fc1.weight.detach()
    constrain(model.fc1, "weight", Mask((w.abs() > w.abs().median()).float()))
    constrain(model.fc2, "weight", AffineQuant(4, axis=0))
    return model


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    """Real .mzip files: the zoo models, a tiny BERT, and a model with very long names."""
    tmp = tmp_path_factory.mktemp("inspect")
    models = {
        "lenet300": _quantized_lenet300(digits),
        "lenet5": fresh("lenet5", digits),
        "bert": mz.load_model(str(um.write_tiny_bert(tmp / "bert"))),
    }
    (tmp / "long_net.py").write_text(LONG_NET)
    models["long"] = mz.load_model(f"{tmp / 'long_net.py'}:build")
    out = {}
    for name, model in models.items():
        path = tmp / f"{name}.mzip"
        write_atomic(path, mzip.to_bytes(model))
        out[name] = path
    return out


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "bert", "long"])
def test_inspect_at_80_columns_cuts_no_name(files, name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    info = inspect_bytes(files[name].read_bytes())
    assert main(["inspect", str(files[name])]) == 0
    summary = capsys.readouterr().out
    _check_80(summary, info)
    # the per-layer bytes add up to the payload
    layers = {layer_of(t["name"]) for t in info["tensors"]}
    rows = [line.split() for line in _unwrap(summary).splitlines()]
    total, seen = 0, set()
    for i, cells in enumerate(rows):
        if cells and cells[0] in layers and cells[0] not in seen:
            seen.add(cells[0])
            nums = cells[1:] if len(cells) > 1 else rows[i + 1]
            total += int(nums[-2].replace(",", ""))
    assert seen == layers
    assert total == info["payload_bytes"]

    assert main(["inspect", str(files[name]), "--tensors"]) == 0
    detail = capsys.readouterr().out
    _check_80(detail, info)
    flat = _unwrap(detail)
    for t in info["tensors"]:
        leaf = t["name"][len(layer_of(t["name"])) + 1 :]
        assert re.search(rf"^  {re.escape(leaf)}(\s|$)", flat, re.M), (leaf, detail)
        for codec in t["codecs"]:
            assert codec in detail.replace("\n", " ")


def test_long_names_really_are_longer_than_the_line(files):
    info = inspect_bytes(files["long"].read_bytes())
    assert max(len(t["name"]) for t in info["tensors"]) > 80
    bert = inspect_bytes(files["bert"].read_bytes())
    assert any(len(layer_of(t["name"])) > 30 for t in bert["tensors"])


def test_inspect_json_is_the_inspect_record(files, capsys):
    assert main(["inspect", str(files["lenet300"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(
        json.dumps(inspect_bytes(files["lenet300"].read_bytes()) | {"file": str(files["lenet300"])})
    )


def test_wrap_name_breaks_after_dots_and_keeps_every_character():
    name = "encoder.layer.11.attention.output.dense_projection_long.weight"
    lines = wrap_name(name, 30)
    assert all(len(line) <= 30 for line in lines)
    assert all(line.endswith(".") for line in lines[:-1])
    assert _unwrap("\n".join(lines)) == name
    hard = "x" * 70
    assert "".join(line.strip() for line in wrap_name(hard, 30)) == hard


def test_wider_terminals_keep_one_line_per_layer(files):
    info = inspect_bytes(files["long"].read_bytes())
    text = format_inspect(info, width=200)
    names = {layer_of(t["name"]) for t in info["tensors"]}
    body = [line for line in text.splitlines() if line.split(" ")[0] in names]
    assert len(body) == len(names)  # name and numbers on one line each
