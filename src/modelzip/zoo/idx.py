"""IDX files (the MNIST family's format) and the full-size Fashion-MNIST from Debian.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order, big-endian. Files may be gzipped.
A folder of IDX files is a data set: ``train-images*`` / ``train-labels*`` and, when present,
``t10k-*`` or ``test-*`` for the test split (``*-images-*`` / ``*-labels-*`` names as in
MNIST's and Fashion-MNIST's releases).

Example:
    >>> x = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> x.shape, x.dtype                                         # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from modelzip.errors import DataError

#: IDX type code -> big-endian numpy dtype.
IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
#: Largest array an IDX header may announce (elements): a hostile header never allocates more.
MAX_ELEMENTS = 1 << 31
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV = "MODELZIP_FASHION_MNIST"
FASHION_PACKAGE = "dataset-fashion-mnist"


def _open(path: Path):  # noqa: ANN202 - a binary file object
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a native-endian numpy array.

    A bad magic, an unknown type code, a size that does not match the header, or trailing
    bytes give a DataError naming the file.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or head[3] == 0:
                raise DataError(
                    f"{path}: not an IDX file (magic {head.hex() or 'empty'}; expected 0000 then "
                    f"a type code in {', '.join(f'{c:02x}' for c in IDX_TYPES)} and a rank >= 1)"
                )
            dtype = np.dtype(IDX_TYPES[head[2]])
            raw_dims = f.read(4 * head[3])
            if len(raw_dims) < 4 * head[3]:
                raise DataError(f"{path}: IDX header truncated")
            dims = struct.unpack(f">{head[3]}I", raw_dims)
            count = int(np.prod(dims, dtype=np.int64))
            if count > MAX_ELEMENTS:
                raise DataError(f"{path}: IDX header announces {count:,} values; refused")
            body = f.read(count * dtype.itemsize + 1)
    except DataError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read as IDX ({exc})") from None
    if len(body) != count * dtype.itemsize:
        got = "more" if len(body) > count * dtype.itemsize else f"{len(body):,}"
        raise DataError(
            f"{path}: IDX header says shape {dims} ({count * dtype.itemsize:,} bytes), "
            f"file holds {got} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, prefixes: tuple[str, ...], kind: str) -> Path | None:
    hits = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.startswith(prefixes) and f"-{kind}-" in p.name
    )
    if len(hits) > 1:
        raise DataError(
            f"{folder}: several {prefixes[0]} {kind} files ({', '.join(p.name for p in hits)})"
        )
    return hits[0] if hits else None


def idx_folder_arrays(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The (images, labels) pairs of an IDX folder, keyed ``train`` and (when present) ``test``.

    Returns the pairs and the file names read. Images and labels must agree in count, and
    labels must be one-dimensional integers.
    """
    folder = Path(folder)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names: list[str] = []
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        images = _find(folder, prefixes, "images")
        labels = _find(folder, prefixes, "labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            have = (images or labels).name  # type: ignore[union-attr]
            raise DataError(f"{folder}: {have} has no matching {split} images/labels file")
        x, y = read_idx(images), read_idx(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{labels}: labels must be 1-D integers, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(
                f"{folder}: {images.name} holds {len(x)} images but {labels.name} {len(y)} labels"
            )
        pairs[split] = (x, y)
        names += [images.name, labels.name]
    if "train" not in pairs:
        raise DataError(
            f"{folder}: no IDX data set here; expected train-images-*/train-labels-* "
            "(and t10k-* or test-* for the test split), IDX format, optionally gzipped"
        )
    return pairs, names


def fashion_mnist_dir() -> Path:
    """Where Debian's ``dataset-fashion-mnist`` puts the files (``MODELZIP_FASHION_MNIST``
    overrides); a DataError naming the package when they are absent."""
    folder = Path(os.environ.get(FASHION_ENV) or FASHION_DIR)
    expected = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")
    missing = [
        n for n in expected if not any((folder / f"{n}{ext}").is_file() for ext in ("", ".gz"))
    ]
    if missing:
        raise DataError(
            f"fashion-mnist: {', '.join(missing)} not found in {folder}; install Debian's "
            f"package {FASHION_PACKAGE} (apt-get install {FASHION_PACKAGE}, or make bench-data)"
            f", or set {FASHION_ENV} to a folder of its IDX files"
        )
    return folder
