"""Real English text: the ``english`` corpus (PyTorch's docstrings) and user text files."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import modelzip as mz
from modelzip.errors import DataError
from modelzip.zoo import corpus


@pytest.fixture(scope="module")
def english():
    return mz.load_data("english")


def test_the_english_corpus_is_large_deduplicated_prose_in_a_fixed_order():
    sents = corpus.english_sentences()
    assert len(sents) >= 3000
    assert len({" ".join(s.lower().split()) for s in sents}) == len(sents)
    prose = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-/%]+[.!?]$")
    assert all(prose.match(s) and 6 <= len(s.split()) <= 40 for s in sents)
    assert not any(s.startswith(("Args:", "Returns:", ">>>")) for s in sents)
    assert list(sents) == corpus.hash_order(list(reversed(sents)))  # order is content-only


def test_english_splits_are_disjoint_and_sized(english):
    splits = corpus.english_splits()
    assert {k: len(v) for k, v in splits.items()} == corpus.ENGLISH_SPLITS
    test, val, train = (set(splits[k]) for k in ("test", "val", "train"))
    assert not (test & val) and not (test & train) and not (val & train)
    assert english.task == "embedding" and english.sizes == corpus.ENGLISH_SPLITS
    ids, idx = next(iter(english.test))
    assert ids.dtype == torch.int64 and ids.shape[1] == 32 and int(ids[0, 0]) == 101
    assert corpus.english_splits() == splits  # deterministic


def test_prose_filter_keeps_sentences_and_drops_code_and_markup():
    text = (
        "Applies a linear transformation to the incoming data of the layer.\n\n"
        "Args:\n    x (Tensor): the input tensor of the function here.\n\n"
        ">>> torch.ones(2, 3).sum(dim=0) is a call.\n\n"
        "Use ``torch.compile`` for speed on recent hardware today. Too short."
    )
    assert corpus.prose_sentences(text) == [
        "Applies a linear transformation to the incoming data of the layer."
    ]


def _lines(n: int) -> list[str]:
    return [f"Sentence number {i} is written by a user of the tool." for i in range(n)]


def test_a_user_text_file_splits_into_disjoint_sets(tmp_path):
    path = tmp_path / "mine.txt"
    lines = _lines(40)
    path.write_text("\ufeff" + "\n\n".join(lines + lines[:5]) + "\n", encoding="utf-8")
    data = mz.load_data(str(path))
    assert data.task == "embedding" and sum(data.sizes.values()) == 40
    assert data.sizes == {"train": 24, "val": 6, "test": 10}
    ids, _ = next(iter(data.val))
    assert ids.shape == (6, 32)


def test_a_parquet_text_column_is_read_as_sentences(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"text": _lines(20), "id": list(range(20))}), path)
    data = mz.load_data(str(path))
    assert data.task == "embedding" and sum(data.sizes.values()) == 20


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "no sentences"),
        (b"\n  \n\n", "no sentences"),
        (b"caf\xe9 au lait is a drink\n" * 20, "not UTF-8 text .invalid byte at offset 3"),
        (b"only one line here\n", "1 distinct sentence"),
        (b"bad\x00line\n" * 20, "NUL byte"),
    ],
)
def test_bad_text_files_are_refused_with_one_clear_line(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        mz.load_data(str(path))


def test_bad_parquet_text_is_refused(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["A real sentence here.", None] * 10}), path)
    with pytest.raises(DataError, match="10 null value"):
        mz.load_data(str(path))
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": list(range(20)), "y": [0] * 20}), ints)
    with pytest.raises(DataError, match="column 'text' must hold strings"):
        mz.load_data(str(ints))
