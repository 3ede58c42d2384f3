"""Regression models: float targets make a regression task (MSE loss, R^2) end to end."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score
from torch.utils.data import DataLoader, TensorDataset

import modelzip as mz
from modelzip.errors import DataError
from modelzip.task import REGRESSION, get_task
from modelzip.testing import user_models as um
from modelzip.train import Trainer


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 7) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("outputs", [1, 3])
def test_r2_over_a_split_matches_scikit_learn(outputs):
    """R^2 needs the whole split's spread: summed over batches of 7, it is scikit-learn's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen)
    y = x[:, :outputs] * 2 + 0.5 * torch.randn(50, outputs, generator=gen)
    model = torch.nn.Linear(4, outputs)
    want = r2_score(y.numpy(), model(x).detach().numpy())
    target = y.squeeze(1) if outputs == 1 else y  # one target: stored as (N,)
    assert REGRESSION.score(model, _loader(x, target)) == pytest.approx(want, abs=1e-6)
    assert get_task("regression") is REGRESSION


def test_a_model_whose_outputs_do_not_fit_the_targets_is_a_clear_error():
    x, y = torch.randn(8, 4), torch.randn(8)
    with pytest.raises(DataError, match=r"outputs shape \(8, 3\).*targets have shape \(8,\)"):
        REGRESSION.loss(torch.nn.Linear(4, 3)(x), y, None)
    with pytest.raises(DataError, match="1 target value"):
        REGRESSION.check_output(torch.zeros(8, 3), 1, "the model")
    REGRESSION.check_output(torch.zeros(8, 1), 1, "the model")
    REGRESSION.check_output(torch.zeros(8), 1, "the model")


def test_float_targets_in_an_npz_make_a_regression_task(tmp_path, caplog):
    data = mz.load_data(str(um.write_regression_npz(tmp_path / "d.npz")))
    assert data.task is REGRESSION and data.num_classes == 1
    assert sum(data.sizes.values()) == 442
    _, yb = next(iter(data.train))
    assert yb.dtype == torch.float32
    # several targets per sample: one output each
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    np.savez(tmp_path / "k.npz", x=x, y=x[:, :3] * 2)
    assert mz.load_data(str(tmp_path / "k.npz")).num_classes == 3
    # class labels saved as floats: regression (the type says so), with a warning saying how
    np.savez(tmp_path / "c.npz", x=x, y=(x[:, 0] > 0).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="modelzip"):
        assert mz.load_data(str(tmp_path / "c.npz")).task is REGRESSION
    assert "store class labels as integers" in caplog.text
    np.savez(tmp_path / "bad.npz", x=x, y=np.where(x[:, 0] > 0, np.nan, 1.0))
    with pytest.raises(DataError, match="NaN"):
        mz.load_data(str(tmp_path / "bad.npz"))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reg")
    data_path = um.write_regression_npz(folder / "diabetes.npz")
    data = mz.load_data(str(data_path))
    model = mz.load_model(f"{um.__file__}:regression_mlp")
    Trainer(progress=False).fit(model, data.train, epochs=60, lr=2e-3, loss_fn=data.task.loss_fn())
    weights = folder / "mlp.pt"
    torch.save(model.state_dict(), weights)
    return model.eval(), data, data_path, weights


# lowrank-distill keeps this MLP's small layers dense (its size rules): the distillation, with
# the teacher's outputs as regression targets, is what runs there
@pytest.mark.parametrize(
    "recipe, min_ratio", [("default", 2.5), ("w8a8", 2.5), ("lowrank-distill", 1.2)]
)
def test_recipes_keep_a_regressors_r2_and_the_file_reloads_to_it(
    recipe, min_ratio, regressor, tmp_path
):
    model, data, _, _ = regressor
    base = data.task.score(model, data.test)
    assert base > 0.35  # the diabetes MLP explains a real share of the variance
    out = tmp_path / "r.mzip"
    res = mz.compress(model, data, recipe, out=out, measure_latency=False)
    got = res["compressed"]["accuracy"]
    assert res["compressed"]["r2"] == got and res["baseline"]["accuracy"] == pytest.approx(base)
    assert got >= base - 0.05, (recipe, base, got)
    assert res["ratio"] > min_ratio, (recipe, res["ratio"])
    loaded = mz.load(out, model=mz.load_model(f"{um.__file__}:regression_mlp"))
    assert data.task.score(loaded, data.test) == pytest.approx(got, abs=1e-6)


def test_cli_compresses_a_regressor_from_npz_and_csv_and_reports_r2(regressor, tmp_path, capsys):
    from modelzip.cli import main

    _, _, data_path, weights = regressor
    spec = f"{um.__file__}:regression_mlp"
    with np.load(data_path) as f:  # the same table as a CSV: a float "target" column
        cols = {f"f{i}": f["x"][:, i] for i in range(f["x"].shape[1])} | {"target": f["y"]}
    csv = tmp_path / "diabetes.csv"
    header = ",".join(cols)
    rows = np.stack(list(cols.values()), axis=1)
    np.savetxt(csv, rows, delimiter=",", header=header, comments="", fmt="%.6f")
    for data in (data_path, csv):
        code = main(
            ["compress", spec, "--weights", str(weights), "--data", str(data), "--recipe",
             "quick", "-o", str(tmp_path / "c.mzip"), "--json", "--report", str(tmp_path / "r")]
        )  # fmt: skip
        assert code == 0
        res = json.loads(capsys.readouterr().out)
        assert "r2" in res["compressed"] and res["compressed"]["accuracy"] > 0.2, data
        report = (tmp_path / "r" / "report.md").read_text()  # the metric by its name
        assert "| # | method | R^2 |" in report and "R^2 " in report.splitlines()[2], report[:300]
    wide = tmp_path / "wide.npz"  # three targets per sample for a one-output model
    np.savez(wide, x=np.zeros((40, 10), np.float32), y=np.zeros((40, 3), np.float32))
    out = str(tmp_path / "w.mzip")
    code = main(["compress", spec, "--data", str(wide), "--recipe", "quick", "-o", out])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "3 target value(s)" in err, err


def test_a_zoo_model_on_regression_data_gets_one_output_per_target_and_learns(tmp_path):
    """``zoo:`` baselines train with the data's task loss (cross-entropy failed on float y)."""
    data = mz.load_data(str(um.write_regression_npz(tmp_path / "d.npz")))
    model = mz.load_model("zoo:lenet300", data=data)
    assert model.fc3.out_features == 1
    assert data.task.score(model, data.test) > 0.3
