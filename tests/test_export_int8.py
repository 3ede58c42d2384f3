"""int8 models export to int8 ONNX (integer ops / QDQ) that ONNX Runtime runs like modelzip."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import modelzip as mz
from modelzip.cli import main
from modelzip.export import export_onnx, ort_kernels_saturate, ort_session
from modelzip.testing.user_models import write_tiny_bert


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def run_ort(path, x: torch.Tensor) -> np.ndarray:
    return ort_session(path).run(None, {"input": x.numpy()})[0]


def test_a_dynamic_int8_bert_exports_integer_ops_that_match(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    data = mz.load_data("english", batch_size=32)
    q = mz.compress(mz.load_model(str(folder)), data, "w8a8", measure_latency=False)["model"]
    path = tmp_path / "q.onnx"
    info = export_onnx(q, path, example=data.example(1))
    assert info["max_abs_diff"] < 1e-4
    assert info["exact_without_vnni"] is False  # 8-bit weights: ort_session needed there
    assert {"MatMulIntegerToFloat", "ReduceMax", "QuantizeLinear"} <= ops(path)
    # each product owns its weight and weight zero point (ORT's no-VNNI precision rewrite
    # converts them in place and fails on shared ones); 16-bit-row layers run two products
    products = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulIntegerToFloat"]
    owned = [n.input[i] for n in products for i in (1, 5)]
    assert len(owned) == len(set(owned)) and len(products) > 6
    x = data.example(32)
    with torch.inference_mode():
        want = q(x).numpy()
    assert float(np.abs(run_ort(path, x) - want).max()) < 1e-4  # batch 32 though exported at 1
    # and any sentence length: token ids keep their length axis symbolic
    short = x[:, :11]
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1].dim_param
    with torch.inference_mode():
        assert float(np.abs(run_ort(path, short) - q(short).numpy()).max()) < 1e-4
    # the session ORT's precision option makes is exact on every CPU, so it agrees with the
    # session chosen for this CPU (plain where the kernels do not saturate)
    precise = ort_session(path, precise=True).run(None, {"input": x.numpy()})[0]
    assert float(np.abs(precise - want).max()) < 1e-4


def precision_option(session) -> str:
    try:
        return session.get_session_options().get_session_config_entry("session.x64quantprecision")
    except RuntimeError:  # ORT raises for an entry that was never set
        return ""


@pytest.mark.parametrize(
    ("flags", "saturate"),
    [
        ({"avx2"}, True),  # AVX2-only EPYC: u8 x s8 pairs saturate in int16
        ({"avx2", "avx512f"}, True),  # AVX-512 without VNNI too
        ({"avx2", "avx512f", "avx512_vnni"}, False),
        ({"avx2", "avx_vnni"}, False),  # MLAS has 256-bit AVX-VNNI kernels
        ({"amx_int8", "avx512f"}, False),
        (set(), True),  # flags unknown on x86: stay exact
    ],
)
def test_ort_precision_is_asked_for_only_where_the_kernels_saturate(flags, saturate, monkeypatch):
    from modelzip.nn import int8_runtime

    monkeypatch.setattr(int8_runtime, "is_x86", lambda: True)
    assert ort_kernels_saturate(frozenset(flags)) is saturate


def test_ort_session_sets_the_precision_option_by_cpu_or_as_told(digits, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    export_onnx(mz.load_model("zoo:lenet300", data=digits), path, example=digits.example(1))
    assert precision_option(ort_session(path, precise=True)) == "1"
    assert precision_option(ort_session(path, precise=False)) == ""
    import modelzip.export as export_module

    for saturate, want in ((True, "1"), (False, "")):
        monkeypatch.setattr(export_module, "ort_kernels_saturate", lambda s=saturate: s)
        assert precision_option(ort_session(path)) == want


def test_a_static_int8_cnn_exports_qdq_that_agrees(digits, tmp_path, capsys):
    lenet = mz.load_model("zoo:lenet5", data=digits)
    out = tmp_path / "q.mzip"
    mz.compress(lenet, digits, "w8a8", out=out, measure_latency=False)
    onnx_path = tmp_path / "q.onnx"
    code = main(["export", str(out), "--onnx", str(onnx_path), "--data", "digits", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and len(captured.out.strip().splitlines()) == 1  # one JSON, no graph dump
    assert json.loads(captured.out)["max_abs_diff"] <= 0.5
    assert json.loads(captured.out)["exact_without_vnni"] is False
    # without --json: the path, and a note on what CPUs without VNNI need
    code = main(["export", str(out), "--onnx", str(tmp_path / "again.onnx"), "--data", "digits"])
    text = capsys.readouterr().out
    assert code == 0 and "again.onnx" in text and "w7a8" in text
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops(onnx_path)
    model = mz.load(out)
    x = torch.cat([digits.example(64)] * 2)
    with torch.inference_mode():
        want = model(x).numpy()
    got = run_ort(onnx_path, x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    step = float(model.fc2.out_scale)
    assert float(np.abs(got - want).max()) <= 3 * step  # rounding ties may differ by a step


def test_export_errors_are_one_line(tmp_path, capsys):
    code = main(["export", "zoo:nope", "--onnx", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["x.txt"])
def test_export_output_must_be_onnx(tmp_path, capsys, bad):
    code = main(["export", "zoo:lenet5", "--onnx", str(tmp_path / bad)])
    assert code == 2 and ".onnx" in capsys.readouterr().err
