"""Text is tokenized by the model's own tokenizer: its folder's, then the one its .mzip records.

The fixture is a RoBERTa-style encoder with its own byte-level BPE vocabulary (1,000 tokens)
and padding id 1, as RoBERTa- and MPNet-based sentence encoders come. Through MiniLM's BERT
tokenizer its ids ran past its vocabulary (an IndexError traceback) and its padding was not
masked. The reference is what sentence-transformers computes: the folder's tokenizer, the
model, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import modelzip as mz
from modelzip.cli import main
from modelzip.embed import embed
from modelzip.testing.user_models import write_tiny_bert, write_tiny_roberta
from modelzip.zoo import tokens
from modelzip.zoo.corpus import english_splits
from modelzip.zoo.text import MAX_TOKENS, for_model, minilm_dir


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return write_tiny_roberta(tmp_path_factory.mktemp("roberta"))


def reference(folder, texts: list[str]) -> np.ndarray:
    """sentence-transformers' recipe with transformers' own tokenizer and model."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    w = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * w).sum(1) / w.sum(1), dim=1).numpy()


TEXTS = english_splits()["test"][:20] + ["Short.", ("A longer sentence " * 12).strip()]


def test_embed_uses_the_folders_tokenizer(roberta_dir):
    ours = embed(str(roberta_dir), TEXTS, batch_size=8)
    assert np.allclose(ours, reference(roberta_dir, TEXTS), atol=1e-5)


def test_data_is_tokenized_again_for_the_model(roberta_dir):
    model = mz.load_model(str(roberta_dir))
    data = mz.load_data("english", batch_size=32)
    fitted = for_model(data, model)
    assert fitted is not data and fitted.sizes == data.sizes
    ids = torch.cat([x for x, _ in fitted.test])
    want = model.tokenizer.encode(english_splits()["test"], max_tokens=MAX_TOKENS, pad_to_max=True)
    assert torch.equal(ids, want)
    assert int(ids.max()) < model.encoder.config.vocab_size
    assert bool((ids == 1).any()) and not bool((ids == 0)[:, 1:].any())  # <pad> is 1, <s> 0
    assert for_model(fitted, model) is fitted  # already the model's ids: unchanged
    # MiniLM-vocabulary models keep the data as loaded (the ids before this change)
    bert = mz.load_model("zoo:minilm")
    assert for_model(data, bert) is data


def test_minilm_ids_are_those_of_transformers_tokenizer():
    from transformers import AutoTokenizer

    texts = english_splits()["val"][:300] + ["", "x " * 200]
    hf = AutoTokenizer.from_pretrained(str(minilm_dir()))
    want = hf(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    got = tokens.minilm().encode(texts, max_tokens=32, pad_to_max=True)
    assert torch.equal(got, want["input_ids"])


def test_compressed_file_records_and_uses_the_tokenizer(roberta_dir, tmp_path, capsys):
    out = tmp_path / "q.mzip"
    model = mz.load_model(str(roberta_dir))
    result = mz.compress(model, "english", "w8a8", out=out, measure_latency=False)
    assert result["compressed"]["cosine_mean"] > 0.99
    # the file alone, away from the folder: its recorded tokenizer gives the same ids
    moved = tmp_path / "elsewhere.mzip"
    shutil.copy(out, moved)
    back = mz.load(moved)
    assert back.tokenizer == model.tokenizer
    emb = embed(str(moved), TEXTS, batch_size=8)
    ref = reference(roberta_dir, TEXTS)
    assert float((emb * ref).sum(1).min()) > 0.99
    # and the command line: embed and export on the file
    text = tmp_path / "in.txt"
    text.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    npy = tmp_path / "e.npy"
    assert (
        main(["embed", str(moved), "--text", str(text), "-o", str(npy), "--batch-size", "8"]) == 0
    )
    assert np.allclose(np.load(npy), emb, atol=1e-6)
    capsys.readouterr()
    onnx_path = tmp_path / "q.onnx"
    code = main(["export", str(moved), "--onnx", str(onnx_path), "--data", "english", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["bytes"] > 0


def test_a_folder_without_a_tokenizer_is_one_line(tmp_path, capsys):
    folder = write_tiny_bert(tmp_path / "bert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    text = tmp_path / "in.txt"
    text.write_text("One sentence.\n", encoding="utf-8")
    code = main(["embed", str(folder), "--text", str(text), "-o", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no tokenizer" in err and "save_pretrained" in err


def test_a_bad_recorded_tokenizer_is_a_format_error():
    from modelzip.errors import FormatError

    with pytest.raises(FormatError, match="tokenizer"):
        tokens.from_spec("{not json", 0, "x.mzip")
    with pytest.raises(FormatError, match="padding id"):
        tokens.from_spec(tokens.minilm().spec, 10**6, "x.mzip")


def test_a_folder_with_only_a_wordpiece_vocab_gets_the_same_ids(tmp_path):
    full = write_tiny_bert(tmp_path / "full")
    slim = tmp_path / "slim"
    shutil.copytree(full, slim)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (slim / name).unlink(missing_ok=True)
    a = tokens.from_folder(full, 0).encode(TEXTS, max_tokens=32, pad_to_max=True)
    b = tokens.from_folder(slim, 0).encode(TEXTS, max_tokens=32, pad_to_max=True)
    assert torch.equal(a, b)


def test_the_bundled_tokenizer_is_not_stored_again(tmp_path):
    from modelzip.source import source_of

    bert = mz.load_model(str(write_tiny_bert(tmp_path / "bert")))  # MiniLM's tokenizer files
    assert "tokenizer" not in source_of(bert).kwargs
    mz.save(bert, tmp_path / "b.mzip")
    assert mz.load(tmp_path / "b.mzip").tokenizer is None  # read as the bundled one
    assert tokens.of_model(mz.load(tmp_path / "b.mzip")) == tokens.minilm()
