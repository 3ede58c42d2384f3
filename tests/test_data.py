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
    floaty = tmp_path / "floaty.npz"
    np.savez(floaty, x=rng.random((60, 4)), y=rng.random(60))
    with pytest.raises(DataError, match="integer class labels"):
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
