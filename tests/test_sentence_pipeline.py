"""A sentence-transformers folder's own pooling, normalisation and token limit, checked against
sentence-transformers itself (``SentenceTransformer.encode``) on the same folder."""

from __future__ import annotations

import numpy as np
import pytest

import modelzip as mz
from modelzip.cli import main
from modelzip.embed import embed
from modelzip.testing.user_models import write_tiny_bert
from modelzip.zoo.corpus import english_splits
from modelzip.zoo.hf import Pipeline
from modelzip.zoo.text import minilm_dir

LONG = " ".join(english_splits()["train"][:12])  # some 300 tokens: past 128 and 256
TEXTS = [*english_splits()["test"][:10], "Short.", LONG]


def st_folder(tmp_path, pooling: str, normalize: bool, max_seq_length: int = 48):
    """A tiny BERT wrapped as a sentence-transformers model and saved by it."""
    from sentence_transformers import SentenceTransformer, models

    bert = write_tiny_bert(tmp_path / "bert")
    word = models.Transformer(str(bert), max_seq_length=max_seq_length)
    mods = [word, models.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        mods.append(models.Normalize())
    st = SentenceTransformer(modules=mods, device="cpu")
    st.save(str(tmp_path / "st"))
    return tmp_path / "st", st


def test_minilm_embeddings_are_sentence_transformers_ones_past_128_tokens():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    ours = embed("zoo:minilm", TEXTS, batch_size=4)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert mz.load_model("zoo:minilm").max_tokens == 256  # its max_seq_length


@pytest.mark.parametrize(
    ("pooling", "normalize"),
    [
        ("cls", False),
        ("max", True),
        ("mean_sqrt_len_tokens", False),
        ("weightedmean", True),
        ("lasttoken", True),
    ],
)
def test_pooling_and_normalisation_follow_the_folder(tmp_path, pooling, normalize):
    folder, st = st_folder(tmp_path, pooling, normalize)
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    ours = embed(str(folder), TEXTS, batch_size=4)
    assert np.allclose(ours, theirs, atol=1e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) == normalize
    # the pooling exports: ONNX Runtime gives the same, at a batch size other than the trace's
    pytest.importorskip("onnxruntime")
    in_ort = embed(str(folder), TEXTS, batch_size=5, runtime="onnxruntime")
    assert np.allclose(in_ort, theirs, atol=1e-5)
    # a .mzip records the pipeline: the file alone embeds the same way
    model = mz.load_model(str(folder))
    assert model.pipeline == Pipeline(pooling, normalize, 48)
    mz.save(model, tmp_path / "m.mzip")
    back = mz.load(tmp_path / "m.mzip")
    assert back.pipeline == model.pipeline
    assert np.allclose(embed(str(tmp_path / "m.mzip"), TEXTS, batch_size=4), theirs, atol=1e-5)


def test_an_unsupported_module_is_one_line(tmp_path, capsys):
    from sentence_transformers import SentenceTransformer, models

    bert = write_tiny_bert(tmp_path / "bert")
    word = models.Transformer(str(bert))
    dim = word.get_embedding_dimension()
    dense = models.Dense(dim, 8)
    SentenceTransformer(modules=[word, models.Pooling(dim), dense], device="cpu").save(
        str(tmp_path / "st")
    )
    text = tmp_path / "in.txt"
    text.write_text("One sentence.\n", encoding="utf-8")
    code = main(["embed", str(tmp_path / "st"), "--text", str(text), "-o", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "Dense" in err and "not supported" in err


def test_sentences_past_the_position_embeddings_are_cut(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")  # 64 positions, no max_seq_length
    model = mz.load_model(str(folder))
    assert model.max_tokens == 64
    emb = embed(model, [LONG, "Short."])
    assert emb.shape == (2, 32) and bool(np.isfinite(emb).all())


def test_a_bad_recorded_pipeline_is_a_format_error():
    from modelzip.errors import FormatError

    with pytest.raises(FormatError, match="pipeline"):
        Pipeline.from_json({"pooling": "median", "normalize": True})
    with pytest.raises(FormatError, match="max_seq_length"):
        Pipeline.from_json({"pooling": "cls", "normalize": True, "max_seq_length": -1})
    assert Pipeline.from_json(None) == Pipeline()


def test_a_classifier_folder_is_refused_not_stripped_of_its_head(tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    folder = write_tiny_bert(tmp_path / "bert")  # for its tokenizer files
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))  # a cross-encoder
    capsys.readouterr()
    out = str(tmp_path / "x.mzip")
    code = main(["compress", str(folder), "--data", "sentences", "--recipe", "w8a8", "-o", out])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "BertForSequenceClassification" in err and "dropped" in err
    assert not (tmp_path / "x.mzip").exists()
