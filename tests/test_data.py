import numpy as np
import pytest

from modelzip.errors import DataError
from modelzip.zoo.data import load_data


def test_mnist5k_split_is_fixed_and_stratified():
    a, b = load_data("mnist5k", seed=0), load_data("mnist5k", seed=3)
    assert a.sizes == {"train": 3500, "val": 500, "test": 1000}
    assert a.sample_shape == (1, 28, 28) and a.num_classes == 10
    ya = np.concatenate([y.numpy() for _, y in a.test])
    yb = np.concatenate([y.numpy() for _, y in b.test])
    assert np.array_equal(ya, yb)  # the test set does not move with the training seed
    assert np.bincount(ya).tolist() == [100] * 10  # stored sorted by digit; split stratified
    x, _ = next(iter(a.train))
    assert x.dtype.is_floating_point and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_npz_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    ok = tmp_path / "ok.npz"
    np.savez(ok, x=rng.random((60, 4, 4)).astype(np.float32), y=rng.integers(0, 3, 60))
    d = load_data(str(ok))
    assert d.sample_shape == (4, 4) and d.num_classes == 3 and sum(d.sizes.values()) == 60
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=rng.random((60, 4)), labels=rng.integers(0, 3, 60))
    with pytest.raises(DataError, match="missing array"):
        load_data(str(bad))
    floaty = tmp_path / "floaty.npz"  # float targets: regression (tests/test_regression.py)
    np.savez(floaty, x=rng.random((60, 4)), y=rng.random(60))
    assert load_data(str(floaty)).task.name == "regression"
    for y in (np.array(["a"] * 60), rng.integers(0, 3, (60, 2)), rng.random((60, 2, 2))):
        np.savez(floaty, x=rng.random((60, 4)), y=y)
        with pytest.raises(DataError, match="class labels"):
            load_data(str(floaty))
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "none.npz"))
    with pytest.raises(DataError, match="valid: digits, mnist5k"):
        load_data("imagenet")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tables_stream_in_batches(tmp_path, fmt):
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((500, 6)), columns=[f"f{i}" for i in range(6)])
    df["label"] = rng.integers(0, 4, 500)
    path = tmp_path / f"t.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    d = load_data(str(path), batch_size=32)
    assert d.sample_shape == (6,) and d.num_classes == 4
    seen = {s: sum(len(y) for _, y in d.loader(s)) for s in ("train", "val", "test")}
    assert seen == d.sizes and sum(seen.values()) == 500
    batches = [len(y) for _, y in d.train]
    assert max(batches) == 32
    test1 = np.concatenate([x.numpy() for x, _ in d.test])
    test2 = np.concatenate([x.numpy() for x, _ in d.test])
    assert np.array_equal(test1, test2)


def test_table_without_label_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataError, match="no label column"):
        load_data(str(path))


# ----------------------------------------------------------------- bad data is refused (#10)


def _table(fmt: str, path, rows: int = 60, *, nan_at=None, labels=None):
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((rows, 3)), columns=["a", "b", "c"])
    if nan_at is not None:
        df.iloc[nan_at[0], nan_at[1]] = nan_at[2]
    y = rng.integers(0, 3, rows) if labels is None else np.asarray(labels)
    df["label"] = y
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    return path


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def _bad_files(tmp_path):
    """(file, fragment of the one-line error) for each bad-data case and reader."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    x_nan = x.copy()
    x_nan[7, 2] = np.nan
    x_nan[9, 0] = np.inf
    y_neg = y.copy()
    y_neg[5] = -1
    y_inf = y.astype(np.float32)  # float targets: regression, which refuses inf
    y_inf[4] = np.inf
    cases = [
        (_npz(tmp_path / "empty.npz", x[:0], y[:0]), "no rows"),
        (
            _npz(tmp_path / "nan.npz", x_nan, y),
            "2 non-finite value(s) (NaN/inf); first nan at x[7, 2]",
        ),
        (_npz(tmp_path / "neg.npz", x, y_neg), "1 negative label(s); first -1 at row 5"),
        (_npz(tmp_path / "strings.npz", x, y.astype(str)), "integer class labels (N,) or float"),
        (
            _npz(tmp_path / "floaty.npz", x, y_inf),
            "1 non-finite value(s) (NaN/inf); first inf at y[4]",
        ),
    ]
    for fmt in ("csv", "parquet"):
        t = tmp_path
        cases += [
            (_table(fmt, t / f"empty.{fmt}", rows=0), "no rows"),
            (
                _table(fmt, t / f"nan.{fmt}", nan_at=(41, 1, np.nan)),
                "column 'b' has 1 missing value(s) (empty, NA or NaN) in rows 0..59; first at row 41",  # noqa: E501
            ),
            (
                _table(fmt, t / f"inf.{fmt}", nan_at=(3, 0, -np.inf)),
                "first -inf at row 3, column 'a'",
            ),
            (_table(fmt, t / f"neg.{fmt}", labels=[0, 1, -2] * 20), "first -2 at row 2"),
            (
                _table(fmt, t / f"floaty.{fmt}", labels=[0.5, np.inf, 2.5] * 20),
                "first inf at row 1, column 'label'",
            ),
        ]
    return cases


def test_bad_data_is_refused_with_a_one_line_data_error(tmp_path):
    for path, fragment in _bad_files(tmp_path):
        with pytest.raises(DataError) as exc:
            load_data(str(path))
        msg = str(exc.value)
        assert msg.startswith(str(path)) and fragment in msg and "\n" not in msg, (path, msg)


def test_bad_data_on_the_command_line_exits_2_and_writes_nothing(tmp_path, capsys):
    from modelzip.cli import main

    for path, fragment in _bad_files(tmp_path):
        out = tmp_path / "out.mzip"
        code = main(
            ["compress", "zoo:lenet300", "--data", str(path), "--recipe", "quick", "-o", str(out)]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (path, err)
        assert str(path) in err and fragment in err, (path, err)
        assert not out.exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_streamed_batches_are_checked_too(tmp_path, fmt):
    path = _table(fmt, tmp_path / f"t.{fmt}", rows=300)
    data = load_data(str(path), batch_size=16)
    assert sum(len(y) for _, y in data.train) == data.sizes["train"]
    # The file changes on disk after it was checked: the next pass refuses it mid-stream.
    _table(fmt, path, rows=300, nan_at=(250, 2, np.inf))
    with pytest.raises(DataError, match="first inf at row 250, column 'c'"):
        for _ in data.train:
            pass
    _table(fmt, path, rows=300, labels=[0, 1, 2, 7] * 75)  # class 7 of a 3-class set
    with pytest.raises(DataError, match=r"outside 0\.\.2; first 7 at row 3"):
        for _ in data.test:
            pass


def test_training_on_a_streamed_csv_knows_its_epoch_length(tmp_path):
    """A csv/parquet split streams in batches; the trainer's schedule (and gradual pruning's
    ramp) asks for its length: it used to fail with a TypeError on any recipe that trains."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    csv = tmp_path / "t.csv"
    np.savetxt(
        csv, np.column_stack([x, y]), delimiter=",", header="a,b,c,d,label", comments="",
        fmt=["%.6f"] * 4 + ["%d"],
    )  # fmt: skip
    data = load_data(str(csv), batch_size=32)
    assert len(data.train) == sum(1 for _ in data.train)
    from modelzip.api import compress
    from modelzip.testing import user_models as um
    from modelzip.train import Trainer

    model = um.tabular_mlp(in_features=4)
    Trainer(progress=False).fit(model, data.train, epochs=20, lr=3e-3)
    res = compress(model, data, "default", measure_latency=False)
    base, got = res["baseline"]["accuracy"], res["compressed"]["accuracy"]
    assert base > 0.9 and got > base - 0.05, (base, got)
