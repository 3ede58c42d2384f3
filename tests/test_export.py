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


class _BatchOfOne(torch.nn.Module):
    """A user model whose forward fixes the batch size in the trace (view(1, -1))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))


def test_export_refuses_a_trace_that_fixed_the_batch_size(tmp_path):
    from modelzip.errors import UnsupportedError
    from modelzip.export import export_onnx

    out = tmp_path / "m.onnx"
    try:
        export_onnx(_BatchOfOne(), out, example=torch.zeros(1, 8, 8))
    except UnsupportedError as exc:
        message = str(exc)
    else:
        raise AssertionError("a model that only runs at batch 1 was exported")
    assert "at batch 3" in message and "view(x.size(0), -1)" in message
    assert "\n" not in message
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp file


def test_export_checks_a_batch_larger_than_the_example(lenet300, digits, tmp_path):
    from modelzip.export import export_onnx

    info = export_onnx(lenet300.eval(), tmp_path / "m.onnx", example=digits.example(1))
    assert info["max_abs_diff"] < 1e-4
