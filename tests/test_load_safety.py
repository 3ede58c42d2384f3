"""Loading a .mzip never imports, executes or calls anything the file names (issue: Trust).

The architecture of a user's model comes from the caller; zoo names, modelzip's own layer
types and Hugging Face configs come from closed allow-lists. Hostile headers are clear
FormatErrors and run nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_container import _join, _split
from torch import nn

import modelzip as mz
from modelzip import export, mzip
from modelzip.errors import FormatError, ModelzipError
from modelzip.nn.registry import CONSTRAINT_KINDS, MODULE_TYPES, closed_table
from modelzip.recipe import Recipe
from modelzip.testing import user_models

SRC = Path(mz.__file__).parent


class MyNet(nn.Module):
    """A model written in the caller's own code, never seen by modelzip before."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU())
        self.out = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _user_blob() -> tuple[nn.Module, bytes]:
    torch.manual_seed(0)
    model = MyNet()
    return model, mzip.to_bytes(model)


def test_plain_module_compresses_and_loads_with_the_callers_model(digits, tmp_path):
    torch.manual_seed(0)
    net = MyNet()
    from modelzip.train import Trainer

    Trainer(progress=False).fit(net, digits.train, epochs=3, lr=3e-3)
    result = mz.compress(net, digits, "quick", out=tmp_path / "m.mzip", measure_latency=False)
    with pytest.raises(FormatError, match="pass its architecture"):
        mz.load(tmp_path / "m.mzip")
    back = mz.load(tmp_path / "m.mzip", model=MyNet())
    deployed = result["model"]
    for (name, a), (_, b) in zip(
        deployed.state_dict().items(), back.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    metrics = mz.evaluate(back, digits, measure_latency=False)
    assert metrics["accuracy"] == result["compressed"]["accuracy"] > 0.8
    # the Python front door takes the architecture for a path, too
    again = mz.evaluate(str(tmp_path / "m.mzip"), digits, measure_latency=False, architecture=MyNet)
    assert (
        again["accuracy"] == metrics["accuracy"] and again["bytes"] == result["compressed"]["bytes"]
    )


def test_a_moved_or_sent_file_still_loads(tmp_path):
    # The file records the factory's name, not its path: moving the code breaks nothing.
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "net.py").write_text(
        "from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(4, 3))\n"
    )
    model = mz.load_model(f"{folder / 'net.py'}:build")
    mz.save(model, tmp_path / "n.mzip")
    header = mzip.load(tmp_path / "n.mzip", model=nn.Sequential(nn.Linear(4, 3)))[1]
    assert header["source"] == {"kind": "user", "ref": "net.py:build", "kwargs": {}}
    assert str(tmp_path) not in json.dumps(header)
    (folder / "net.py").rename(tmp_path / "moved.py")
    back = mz.load(tmp_path / "n.mzip", model=lambda: nn.Sequential(nn.Linear(4, 3)))
    assert torch.equal(back[0].weight, model[0].weight)


def _with_source(source: dict) -> bytes:
    _, blob = _user_blob()
    obj, payloads = _split(blob)
    obj["source"] = source
    return _join(obj, payloads)


EVIL = "import pathlib; pathlib.Path({marker!r}).write_text('ran'); print('EVIL RAN')\n"


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "factory", "ref": f"{os.__file__}:system", "kwargs": {"command": "touch {m}"}},
        {"kind": "factory", "ref": "evil.py:build", "kwargs": {}},
        {"kind": "user", "ref": "evil.py:build", "kwargs": {"x": 1}},
        {"kind": "zoo", "ref": "lenet300", "kwargs": {"__reduce__": ["os.system", ["touch {m}"]]}},
        {"kind": "hf", "ref": "x", "kwargs": {"config": {"model_type": "evil", "auto_map": {}}}},
        {"kind": "module", "ref": "os:system", "kwargs": {}},
    ],
    ids=["os-system", "relative-path", "user-label", "reduce-kwargs", "hf-remote-code", "kind"],
)
def test_hostile_sources_run_nothing_and_are_format_errors(tmp_path, monkeypatch, source, capfd):
    marker = tmp_path / "marker"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)  # a relative path would resolve here
    monkeypatch.syspath_prepend(str(tmp_path))
    text = json.dumps(source).replace("{m}", str(marker))
    blob = _with_source(json.loads(text))
    (tmp_path / "h.mzip").write_bytes(blob)
    for load in (
        lambda: mz.load(tmp_path / "h.mzip"),
        lambda: mzip.from_bytes(blob),
    ):
        with pytest.raises(FormatError):
            load()
    # inspecting reads the header and tensors only
    from modelzip.codec.inspect import inspect_file

    inspect_file(tmp_path / "h.mzip")
    assert not marker.exists()
    assert "EVIL RAN" not in capfd.readouterr().out
    assert "evil" not in " ".join(sys.modules)


def test_hostile_file_on_the_command_line_is_exit_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    blob = _with_source(
        {
            "kind": "factory",
            "ref": f"{os.__file__}:system",
            "kwargs": {"command": f"touch {marker}"},
        }
    )
    (tmp_path / "h.mzip").write_bytes(blob)
    for args in (
        ["evaluate", "h.mzip", "--data", "digits"],
        ["export", "h.mzip", "--onnx", "o.onnx"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "modelzip.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "--model FILE.py:FACTORY" in lines[0]
    assert not marker.exists() and not (tmp_path / "o.onnx").exists()


LOADER_PROBE = """
import importlib, importlib.util, sys
import modelzip.factory
from torch import nn
from modelzip import mzip

def refuse(*args, **kwargs):
    raise SystemExit("the loader tried to import or call user code: " + repr(args)[:80])

# Every way modelzip could reach code a file names is closed before loading.
modelzip.factory.call_factory = refuse
importlib.import_module = refuse
importlib.util.spec_from_file_location = refuse

class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU())
        self.out = nn.Linear(48, 10)

mzip.load(sys.argv[1], model=MyNet())
try:
    mzip.load(sys.argv[2])
except Exception as exc:
    print(type(exc).__name__)
print([k for k in sys.modules if k.startswith(("modelzip.methods", "modelzip_user"))])
"""


def test_loading_never_reaches_user_code_or_the_methods(tmp_path):
    """In a fresh process with every import hook closed, reading a user file (with its
    architecture) and a hostile one (naming os.system) calls nothing and imports neither the
    methods nor user code; no module of the load path mentions importlib or exec."""
    _, blob = _user_blob()
    (tmp_path / "u.mzip").write_bytes(blob)
    hostile = _with_source({"kind": "factory", "ref": f"{os.__file__}:system", "kwargs": {}})
    (tmp_path / "h.mzip").write_bytes(hostile)
    out = subprocess.run(
        [sys.executable, "-c", LOADER_PROBE, str(tmp_path / "u.mzip"), str(tmp_path / "h.mzip")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FormatError", "[]"], out.stdout + out.stderr
    load_path = [*sorted((SRC / "codec").glob("*.py")), *sorted((SRC / "nn").glob("*.py"))]
    load_path += [SRC / "mzip.py", SRC / "source.py", SRC / "zoo" / "hf.py"]
    for path in load_path:
        text = path.read_text()
        # builtins that run code, as calls (``model.eval()`` is a method, not the builtin)
        for pattern in (
            r"importlib",
            r"__import__",
            r"(?<![.\w])(exec|eval)\(",
            r"\bimport pickle|pickle\.load",
        ):
            assert not re.search(pattern, text), f"{path.name} matches {pattern}"
        assert "modelzip.factory" not in text, path.name


def test_allow_lists_are_closed_and_refuse_duplicates():
    import modelzip.methods  # noqa: F401  (importing the methods changes nothing below)
    from modelzip.nn.constraints import AffineQuant
    from modelzip.nn.fakequant import LearnedAffineQuant

    assert CONSTRAINT_KINDS["affine"] is AffineQuant
    assert LearnedAffineQuant not in CONSTRAINT_KINDS.values()
    assert {"QuantLinear", "LowRankLinear", "Linear", "Conv2d"} <= set(MODULE_TYPES)
    assert "Sequential" not in MODULE_TYPES and "MyNet" not in MODULE_TYPES
    with pytest.raises(ValueError, match="listed twice"):
        closed_table([AffineQuant, LearnedAffineQuant], key=lambda c: c.kind)
    from modelzip.codec.codecs import CODECS

    assert len(CODECS) == len({c.name for c in CODECS.values()})


def test_a_file_naming_an_unlisted_module_type_is_refused():
    model, blob = _user_blob()
    obj, payloads = _split(blob)
    obj["arch"] = {"out": {"type": "Sequential", "args": {}}}
    with pytest.raises(FormatError, match="unknown module type 'Sequential'"):
        mzip.from_bytes(_join(obj, payloads), model=MyNet())


def test_a_skeleton_that_does_not_fit_says_so():
    _, blob = _user_blob()
    with pytest.raises(ModelzipError, match="is it the model the file was made from"):
        mzip.from_bytes(blob, model=nn.Sequential(nn.Linear(3, 3)))
    other = MyNet()
    other.temperature = nn.Parameter(torch.ones(1))  # a tensor the file does not hold
    with pytest.raises(ModelzipError, match="does not fit the file.*temperature"):
        mzip.from_bytes(blob, model=other)


@pytest.mark.parametrize(
    "factory", ["residual_cnn", "concat_net", "depthwise_cnn"], ids=lambda f: f
)
def test_user_fixtures_round_trip_with_the_callers_model(digits, tmp_path, factory):
    build = getattr(user_models, factory)
    model = build().eval()
    result = mz.compress(model, digits, "quick", out=tmp_path / "f.mzip", measure_latency=False)
    back = mz.load(tmp_path / "f.mzip", model=build)
    x = digits.example(8)
    with torch.no_grad():
        assert torch.equal(back(x), result["model"](x))
    again = mz.evaluate(back, digits, measure_latency=False)
    assert again["accuracy"] == result["compressed"]["accuracy"]


def test_tiny_bert_folder_saves_its_config_not_its_path(tmp_path):
    folder = user_models.write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder))
    mz.save(model, tmp_path / "b.mzip")
    back, header = mzip.load(tmp_path / "b.mzip")  # built from the recorded config alone
    assert header["source"]["kind"] == "hf" and str(tmp_path) not in json.dumps(header)
    ids = torch.tensor([[101, 2023, 2003, 102, 0]])
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_build_size_counts_what_a_module_allocates_not_the_product_of_its_sizes():
    # a low-rank 800 x 500 layer at rank 250 holds 325,500 weights: the product of its
    # sizes (100 million) refused a real 14 KB file of a searched LeNet-5 at 125x
    low_rank = {
        "type": "LowRankLinear",
        "args": {"in_features": 800, "out_features": 500, "rank": 250, "bias": True},
    }
    header = {"source": {"kind": "zoo", "kwargs": {}}, "architecture": {"fc1": low_rank}}
    mzip.check_build_size(header, budget=400_000)
    with pytest.raises(FormatError, match="'fc1'.*too large"):
        mzip.check_build_size(header, budget=300_000)
    # a hostile layer is still refused before anything is allocated
    huge = {"type": "Linear", "args": {"in_features": 1 << 30, "out_features": 1 << 30}}
    with pytest.raises(FormatError, match="'out'.*too large"):
        mzip.check_build_size({**header, "architecture": {"out": huge}}, budget=1 << 24)
    zoo = {"kind": "zoo", "kwargs": {"hidden": [1 << 20, 1 << 20]}}
    with pytest.raises(FormatError, match="'source'.*too large"):
        mzip.check_build_size({"source": zoo, "architecture": {}}, budget=1 << 24)


def test_a_heavily_compressed_low_rank_model_loads(tmp_path):
    # the searched policy that failed: LeNet-5's fc1 factorized at half rank, pruned hard
    data = mz.load_data("mnist5k")  # 28 x 28: fc1 is 800 x 500
    model = mz.load_model("zoo:lenet5", data=data)
    recipe = {
        "stages": [
            {"method": "lowrank", "rank": {"fc1": 250}},
            {"method": "prune", "sparsity": 0.99, "scope": "layer"},
            {"method": "cluster", "bits": 2},
            {"method": "encode", "coder": "auto"},
        ]
    }
    out = tmp_path / "m.mzip"
    result = mz.compress(model, data, Recipe.from_dict(recipe), out=out, measure_latency=False)
    assert out.stat().st_size * 4096 < 800 * 500 * 250  # the old rule's product: refused
    loaded = mz.load(out)
    x = data.example(4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result["model"](x), atol=1e-5)


@pytest.mark.parametrize(
    "record",
    [
        {"shape": [4], "dtype": "float64"},
        {"shape": [4], "dtype": "int64"},  # token ids are never recorded
        {"shape": "4", "dtype": "float32"},
        {"shape": [0], "dtype": "float32"},
        {"shape": [True], "dtype": "float32"},
        {"shape": [1] * 9, "dtype": "float32"},
        ["float32", 4],
    ],
)
def test_a_bad_input_record_is_a_format_error(record):
    _, blob = _user_blob()
    obj, payloads = _split(blob)
    good = {**obj, "info": {"input": {"shape": [64], "dtype": "float32"}}}
    back, _ = mzip.from_bytes(_join(good, payloads), model=MyNet())
    assert export.example_input(back, batch=2).shape == (2, 64)
    obj["info"] = {"input": record}
    with pytest.raises(FormatError, match="bad input record"):
        mzip.from_bytes(_join(obj, payloads), model=MyNet())
