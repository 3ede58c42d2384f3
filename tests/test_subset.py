import numpy as np
import pytest

from modelzip.errors import DataError
from modelzip.zoo.data import load_data
from modelzip.zoo.subset import train_subset


def _labels(loader) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in loader])


def test_train_subset_is_fixed_stratified_and_leaves_val_and_test_whole():
    full = load_data("digits", seed=0)
    small = train_subset(full, 200)
    assert small.name == "digits (train subset 200)"
    assert small.sizes == {**full.sizes, "train": 200}
    assert small.loaders["val"] is full.loaders["val"]
    assert small.loaders["test"] is full.loaders["test"]
    y = _labels(small.train)
    assert len(y) == 200
    share = np.bincount(_labels(full.train), minlength=10) / full.sizes["train"]
    assert np.abs(np.bincount(y, minlength=10) / 200 - share).max() < 0.02  # stratified
    x, _ = next(iter(small.train))
    assert x.shape[1:] == (1, 8, 8)
    # the subset does not move with the training seed (only the batch order does)
    other = train_subset(load_data("digits", seed=3), 200)
    pick = {tuple(x.flatten().tolist()) for x, _ in small.train.dataset}
    assert pick == {tuple(x.flatten().tolist()) for x, _ in other.train.dataset}
    assert small.train.batch_size == full.train.batch_size


def test_train_subset_refuses_bad_sizes_and_streams(tmp_path):
    full = load_data("digits")
    for n in (5, full.sizes["train"], 10**6):
        with pytest.raises(DataError, match=r"train subset of .* valid: 10 \(one per class\)"):
            train_subset(full, n)
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{int(c)}" for a, b, c in rng.random((60, 3)) * [1, 1, 3]]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="in-memory data set, not a stream"):
        train_subset(load_data(str(path)), 20)
