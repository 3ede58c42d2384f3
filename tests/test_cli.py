"""The `modelzip` command end to end (in-process, on the real digits data)."""

from __future__ import annotations

import json

import pytest
import torch

from modelzip.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "stages:\n  - method: prune\n    sparsity: 0.5\n  - method: finetune\n    epochs: 1\n"
        "  - method: quantize\n    bits: 8\n"
    )
    return path


def test_compress_then_evaluate_agree(capsys, tmp_path, recipe):
    out = tmp_path / "out.mzip"
    code, stdout, _ = run(
        capsys,
        "compress",
        "zoo:lenet300",
        "--data",
        "digits",
        "--recipe",
        str(recipe),
        "-o",
        str(out),
        "--json",
        "--report",
        str(tmp_path / "rep"),
    )
    assert code == 0
    result = json.loads(stdout)  # exactly one JSON object on stdout
    for key in ("baseline", "compressed", "ratio", "stages"):
        assert key in result
    for key in ("accuracy", "bytes", "params", "nonzero", "bits_per_weight", "latency_ms"):
        assert key in result["compressed"]
    assert result["compressed"]["bytes"] == out.stat().st_size
    assert result["ratio"] == pytest.approx(
        result["baseline"]["bytes"] / result["compressed"]["bytes"], rel=1e-3
    )
    assert result["ratio"] > 3.0  # 8-bit codes at least
    assert result["compressed"]["accuracy"] > 0.85
    assert [s["method"] for s in result["stages"]] == ["prune", "finetune", "quantize"]
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# modelzip report")
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["ratio"] == result["ratio"]

    code, stdout, _ = run(capsys, "evaluate", str(out), "--data", "digits", "--json")
    assert code == 0
    ev = json.loads(stdout)
    assert ev["accuracy"] == result["compressed"]["accuracy"]
    assert ev["bytes"] == out.stat().st_size
    assert ev["nonzero"] == result["compressed"]["nonzero"]

    code, stdout, _ = run(capsys, "inspect", str(out), "--json")
    assert code == 0
    info = json.loads(stdout)
    assert {t["name"] for t in info["tensors"]} >= {"fc1.weight", "fc3.bias"}


def test_user_factory_with_weights(capsys, tmp_path, recipe):
    src = tmp_path / "net.py"
    src.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    )
    from modelzip.factory import call_factory

    model = call_factory(f"{src}:build")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "u.mzip"
    code, stdout, err = run(
        capsys,
        "compress",
        f"{src}:build",
        "--weights",
        str(tmp_path / "w.pt"),
        "--data",
        "digits",
        "--recipe",
        str(recipe),
        "-o",
        str(out),
        "--json",
    )
    assert code == 0, err
    compressed = json.loads(stdout)["compressed"]
    # The file names no code to run: without the architecture it says what to pass ...
    code, _, err = run(capsys, "evaluate", str(out), "--data", "digits", "--json")
    assert code == 2 and "--model FILE.py:FACTORY" in err and "net.py:build" in err
    # ... and with the user's factory it reports what compress measured.
    code, stdout, err = run(
        capsys, "evaluate", str(out), "--model", f"{src}:build", "--data", "digits", "--json"
    )
    assert code == 0, err
    got = json.loads(stdout)
    assert got["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert got["accuracy"] == compressed["accuracy"] and got["bytes"] == compressed["bytes"]
    # It exports without --data: the file records the input shape it was compressed on.
    onnx = tmp_path / "u.onnx"
    code, _, err = run(capsys, "export", str(out), "--model", f"{src}:build", "--onnx", str(onnx))
    assert code == 0, err
    assert onnx.stat().st_size > 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ["compress", "zoo:lenet3", "--data", "digits", "--recipe", "default"],
            "unknown zoo model",
        ),
        (["compress", "zoo:lenet300", "--data", "digitz", "--recipe", "default"], "unknown data"),
        (["compress", "zoo:lenet300", "--data", "digits", "--recipe", "nope.yaml"], "not found"),
        (["compress", "zoo:lenet300", "--data", "digits", "--recipe", "BAD"], "sparsty"),
        (
            ["compress", "zoo:lenet300", "--data", "digits", "--recipe", "default", "--bogus"],
            "--bogus",
        ),
        (["evaluate", "missing.mzip", "--data", "digits"], "not found"),
        (["evaluate", "zoo:lenet300", "--data", "digits", "--split", "dev"], "valid splits"),
        (["inspect", "missing.mzip"], "not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text("stages:\n  - method: prune\n    sparsty: 0.5\n")
    args = [a.replace("BAD", str(tmp_path / "BAD")) for a in args]
    if args[0] == "compress":
        args += ["-o", "out.mzip"]
    code, stdout, err = run(capsys, *args)
    assert code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out.mzip").exists()


def test_data_that_does_not_fit_the_model(capsys, tmp_path):
    import numpy as np

    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((80, 1, 8, 8)).astype("float32"), y=rng.integers(0, 10, 80))
    src = tmp_path / "net.py"
    src.write_text("from torch import nn\ndef build():\n    return nn.Linear(100, 10)\n")
    code, _, err = run(
        capsys,
        "compress",
        f"{src}:build",
        "--data",
        str(path),
        "--recipe",
        "quick",
        "-o",
        str(tmp_path / "o.mzip"),
    )
    assert code == 2 and "does not fit" in err and err.count("\n") == 1
    assert not (tmp_path / "o.mzip").exists()


def test_recipes_command_lists_builtins(capsys):
    code, stdout, _ = run(capsys, "recipes", "--json")
    assert code == 0 and "default" in json.loads(stdout)
