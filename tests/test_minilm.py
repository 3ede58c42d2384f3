"""The real pretrained all-MiniLM-L6-v2 (bundled package) on the `sentences` data."""

import pytest
import torch

from modelzip import api, mzip
from modelzip.recipe import Recipe


@pytest.fixture(scope="module")
def sentences():
    return api.load_data("sentences")


def test_sentences_split_and_tokens(sentences):
    assert sentences.task == "embedding"
    assert sentences.sizes == {"train": 700, "val": 100, "test": 200}
    ids, _ = next(iter(sentences.test))
    assert ids.dtype == torch.int64 and ids.shape[1] == 32
    assert int(ids[0, 0]) == 101  # [CLS]: real WordPiece ids from the bundled tokenizer


def test_minilm_matches_sentence_transformers(sentences):
    from sentence_transformers import SentenceTransformer

    from modelzip.zoo.text import minilm_dir
    from modelzip.zoo.text import sentences as texts

    model = api.load_model("zoo:minilm")
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    some = texts()[:4]
    from modelzip.zoo.text import tokenize

    with torch.no_grad():
        ours = model(tokenize(some))
    theirs = torch.from_numpy(st.encode(some, convert_to_numpy=True))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_quantized_minilm_keeps_embeddings_and_round_trips(sentences, tmp_path):
    model = api.load_model("zoo:minilm")
    recipe = Recipe.from_dict(
        {
            "stages": [
                {
                    "method": "quantize",
                    "bits": 8,
                    "layers": ["re:encoder\\.encoder\\.layer\\.[01]\\..*(query|key|value|dense)"],
                }
            ]
        }
    )
    result = api.compress(model, sentences, recipe, out=tmp_path / "m.mzip", measure_latency=False)
    assert result["baseline"]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < result["compressed"]["cosine_mean"] < 1.0
    assert result["compressed"]["bytes"] < result["baseline"]["bytes"]
    again = api.evaluate(str(tmp_path / "m.mzip"), sentences, measure_latency=False)
    assert again["cosine_mean"] == pytest.approx(result["compressed"]["cosine_mean"], abs=1e-6)
    loaded, _ = mzip.load(tmp_path / "m.mzip")
    x = sentences.example(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), result["model"](x))
