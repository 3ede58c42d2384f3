"""IDX files, IDX folders as data, and the full-size Fashion-MNIST from Debian."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from modelzip.errors import DataError
from modelzip.zoo.data import load_data
from modelzip.zoo.idx import FASHION_DIR, FASHION_ENV, FASHION_PACKAGE, read_idx

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path, arr: np.ndarray, *, gz: bool = True) -> None:
    code = CODES[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(body) if gz else body)


def write_set(folder, n_train: int, n_test: int, *, classes: int = 4, side: int = 6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if n == 0:
            continue
        y = (np.arange(n) % classes).astype(np.uint8)
        x = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        x[:, 0, 0] = y * 60  # a learnable signal in one pixel
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 5, 2)) * 50).astype(dtype)
    write_idx(tmp_path / "a.idx", arr, gz=gz)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, arr)


def test_bad_idx_files_are_clear_errors(tmp_path):
    good = tmp_path / "g"
    write_idx(good, np.zeros((4, 3), np.uint8), gz=False)
    raw = good.read_bytes()
    cases = {
        "magic": (b"\x01\x02" + raw[2:], "not an IDX file"),
        "type": (raw[:2] + b"\x07" + raw[3:], "not an IDX file"),
        "short": (raw[:-1], "file holds 11 bytes"),
        "long": (raw + b"\0", "file holds more bytes"),
        "header": (raw[:6], "header truncated"),
        "huge": (raw[:4] + struct.pack(">2I", 1 << 20, 1 << 20), "refused"),
    }
    for name, (blob, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(DataError, match=fragment) as exc:
            read_idx(path)
        assert str(path) in str(exc.value)


def test_idx_folder_keeps_its_test_split_and_stratifies_train_val(tmp_path):
    arrays = write_set(tmp_path / "set", 200, 40)
    d = load_data(str(tmp_path / "set"), batch_size=16)
    assert d.sizes == {"train": 180, "val": 20, "test": 40}
    assert d.sample_shape == (1, 6, 6) and d.num_classes == 4
    x_test = np.concatenate([x.numpy() for x, _ in d.test])
    y_test = np.concatenate([y.numpy() for _, y in d.test])
    x0, y0 = arrays["t10k"]
    assert np.array_equal(y_test, y0)  # the file's own test split, in order
    assert np.allclose(x_test[:, 0], x0 / 255.0)
    y_val = np.concatenate([y.numpy() for _, y in d.val])
    assert np.bincount(y_val).tolist() == [5, 5, 5, 5]  # stratified
    assert load_data(str(tmp_path / "set"), seed=5).sizes == d.sizes


def test_idx_folder_without_test_files_is_split_three_ways(tmp_path):
    write_set(tmp_path / "only", 100, 0)
    d = load_data(str(tmp_path / "only"))
    assert d.sizes == {"train": 70, "val": 10, "test": 20}


def test_idx_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no IDX data set here"):
        load_data(str(tmp_path / "empty"))
    write_set(tmp_path / "odd", 30, 10)
    (tmp_path / "odd" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no matching test images/labels"):
        load_data(str(tmp_path / "odd"))
    write_set(tmp_path / "mismatch", 30, 10)
    write_idx(tmp_path / "mismatch" / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 images but train-labels-idx1-ubyte.gz 29 labels"):
        load_data(str(tmp_path / "mismatch"))


def test_fashion_mnist_names_the_debian_package_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as exc:
        load_data("fashion-mnist")
    assert FASHION_PACKAGE in str(exc.value) and "\n" not in str(exc.value)


def test_fashion_mnist_reads_a_folder_of_its_files(tmp_path, monkeypatch):
    write_set(tmp_path / "fm", 120, 30, classes=10, side=28)
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "fm"))
    d = load_data("fashion-mnist")
    assert d.name == "fashion-mnist" and d.sample_shape == (1, 28, 28)
    assert d.sizes == {"train": 108, "val": 12, "test": 30}


@pytest.mark.slow  # 70,000 images: a few seconds; benchmarks/recipes.py uses them too
@pytest.mark.skipif(
    not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian's {FASHION_PACKAGE} is not installed (make bench-data)",
)
def test_real_fashion_mnist_is_70000_images(monkeypatch):
    monkeypatch.delenv(FASHION_ENV, raising=False)
    d = load_data("fashion-mnist")
    assert d.sizes == {"train": 54000, "val": 6000, "test": 10000}
    assert d.num_classes == 10 and d.sample_shape == (1, 28, 28)
    y_test = np.concatenate([y.numpy() for _, y in d.test])
    assert np.bincount(y_test).tolist() == [1000] * 10
