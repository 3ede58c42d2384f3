import json

import onnxruntime as ort
import torch

from modelzip import mzip
from modelzip.cli import main
from modelzip.nn.constraints import AffineQuant, constrain


def test_export_mzip_to_onnx_matches_torch(lenet300, digits, tmp_path, capsys):
    constrain(lenet300.fc1, "weight", AffineQuant(8))
    mzip.save(lenet300, tmp_path / "m.mzip")
    code = main(["export", str(tmp_path / "m.mzip"), "--onnx", str(tmp_path / "m.onnx"), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = digits.example(8)  # a batch of 8 although exported with batch 1: dynamic axis
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = mzip.load(tmp_path / "m.mzip")[0](x).numpy()
    assert abs(got - want).max() < 1e-4
