"""``modelzip embed`` and ``modelzip.embed``: embeddings of text files, and retrieval metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import modelzip as mz
from modelzip.cli import main
from modelzip.embed import embed
from modelzip.errors import ConfigError, ModelError
from modelzip.eval.retrieval import fidelity, top_k_overlap
from modelzip.testing.user_models import write_tiny_bert
from modelzip.zoo.corpus import english_splits


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(english_splits()["test"][:12]) + "\n", encoding="utf-8")
    return path


def test_embed_writes_npy_and_json_lines_that_match_the_model(
    capsys, bert_dir, text_file, tmp_path
):
    npy = tmp_path / "e.npy"
    code, out, err = run(capsys, "embed", str(bert_dir), "--text", str(text_file), "-o", str(npy))
    assert code == 0, err
    emb = np.load(npy)
    assert emb.shape == (12, 32) and emb.dtype == np.float32
    lines = text_file.read_text().splitlines()
    ours = embed(str(bert_dir), lines)
    assert np.allclose(emb, ours, atol=1e-6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    jl = tmp_path / "e.jsonl"
    code, out, _ = run(
        capsys, "embed", str(bert_dir), "--text", str(text_file), "-o", str(jl), "--json"
    )
    assert code == 0 and json.loads(out)["sentences"] == 12
    recs = [json.loads(line) for line in jl.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in recs] == lines
    assert np.allclose(np.array([r["embedding"] for r in recs]), emb, atol=1e-6)


def test_embed_runs_a_compressed_int8_file(bert_dir, tmp_path):
    model = mz.load_model(str(bert_dir))
    data = mz.load_data("english", batch_size=32)
    result = mz.compress(model, data, "w8a8", out=tmp_path / "q.mzip", measure_latency=False)
    comp = result["compressed"]
    assert comp["cosine_mean"] > 0.999 and comp["top10_overlap"] > 0.9
    assert comp["cosine_min"] <= comp["cosine_mean"]
    texts = english_splits()["test"][:40]
    a, b = embed(str(bert_dir), texts), embed(str(tmp_path / "q.mzip"), texts)
    assert float((a * b).sum(1).min()) > 0.995
    # the frozen TorchScript form embed runs: the module's values, at other batch sizes and
    # sentence lengths than the batch it was traced on (the last batch here is 8, not 16)
    eager = embed(str(tmp_path / "q.mzip"), texts, batch_size=16, frozen=False)
    assert np.array_equal(embed(str(tmp_path / "q.mzip"), texts, batch_size=16), eager)


@pytest.fixture(scope="module")
def int8_file(bert_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "q.mzip"
    model = mz.load_model(str(bert_dir))
    data = mz.load_data("english", batch_size=32)
    mz.compress(model, data, "w8a8", out=path, measure_latency=False)
    return path


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_embed_in_onnxruntime_gives_the_models_embeddings(bert_dir, int8_file, which):
    model = str(bert_dir) if which == "fp32" else str(int8_file)
    texts = english_splits()["test"][:40]  # batches of 16, 16 and 8 sentences, every length
    info: dict = {}
    ort = embed(model, texts, batch_size=16, runtime="onnxruntime", info=info)
    assert info["runtime"] == "onnxruntime"
    eager = embed(model, texts, batch_size=16, frozen=False, runtime="torch")
    assert ort.shape == eager.shape
    assert float(np.abs(ort - eager).max()) < 1e-5


def test_auto_runtime_times_both_only_for_a_long_text(capsys, int8_file, tmp_path):
    from modelzip.embed import AUTO_MIN_BATCHES

    texts = english_splits()["test"]
    info: dict = {}
    short = embed(str(int8_file), texts[:8], batch_size=4, runtime="auto", info=info)
    assert info["runtime"] == "torch" and "too few" in info["why"]
    long_text = tmp_path / "long.txt"
    long_text.write_text("\n".join(texts[: 4 * AUTO_MIN_BATCHES]) + "\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    code, stdout, err = run(
        capsys,
        "embed",
        str(int8_file),
        "--text",
        str(long_text),
        "-o",
        str(out),
        "--batch-size",
        "4",
        "--runtime",
        "auto",
        "--json",
    )
    assert code == 0, err
    chosen = json.loads(stdout)
    assert chosen["runtime"] in ("torch", "onnxruntime")
    assert "onnxruntime" in chosen["why"] and "torch" in chosen["why"]  # both were timed
    assert np.allclose(np.load(out)[:8], short, atol=1e-5)


def test_an_unknown_runtime_exits_2_with_the_choices(capsys, bert_dir, text_file, tmp_path):
    out = tmp_path / "o.npy"
    code, _, err = run(
        capsys,
        "embed",
        str(bert_dir),
        "--text",
        str(text_file),
        "-o",
        str(out),
        "--runtime",
        "tensorrt",
    )
    assert code == 2 and "auto, torch, onnxruntime" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "no sentences"), (b"\xff\xfe bad\n", "not UTF-8"), (b"\n\n", "no sentences")],
)
def test_bad_text_input_exits_2_with_one_line(capsys, bert_dir, tmp_path, content, match):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = tmp_path / "o.npy"
    code, stdout, err = run(capsys, "embed", str(bert_dir), "--text", str(bad), "-o", str(out))
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_max_tokens_cuts_each_line_and_bad_values_exit_2(capsys, bert_dir, tmp_path):
    long_line = " ".join(english_splits()["test"][:6])  # far past 8 tokens
    text = tmp_path / "long.txt"
    text.write_text(long_line + "\n", encoding="utf-8")
    out = tmp_path / "o.npy"
    code, stdout, err = run(
        capsys, "embed", str(bert_dir), "--text", str(text), "-o", str(out),
        "--max-tokens", "8", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["max_tokens"] == 8
    cut = np.load(out)
    full = embed(str(bert_dir), [long_line])
    assert np.allclose(cut, embed(str(bert_dir), [long_line], max_tokens=8), atol=1e-6)
    assert not np.allclose(cut, full, atol=1e-3)  # the cut changed the embedding
    # the model's own limit is the ceiling: a larger value gives the default embedding
    assert np.allclose(embed(str(bert_dir), [long_line], max_tokens=10**6), full, atol=1e-6)
    code, _, err = run(
        capsys, "embed", str(bert_dir), "--text", str(text), "-o", str(tmp_path / "b.npy"),
        "--max-tokens", "1",
    )  # fmt: skip
    assert code == 2 and "--max-tokens" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.npy").exists()
    with pytest.raises(ConfigError, match="at least 2"):
        embed(str(bert_dir), [long_line], max_tokens=0)


def test_bad_output_and_non_text_models_are_refused(capsys, bert_dir, text_file, tmp_path):
    code, _, err = run(
        capsys, "embed", str(bert_dir), "--text", str(text_file), "-o", str(tmp_path / "o.csv")
    )
    assert code == 2 and ".npy or .jsonl" in err
    with pytest.raises(ModelError, match="not a text model"):
        embed(nn.Sequential(nn.Linear(4, 2)), ["A sentence."])


def test_retrieval_metrics_on_known_cases():
    torch.manual_seed(0)
    ref = torch.randn(200, 16)
    same = fidelity(ref * 3.0, ref)  # scaling changes no cosine and no neighbour
    assert same["cosine_min"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    noisy = fidelity(ref + 0.3 * torch.randn(200, 16), ref)
    assert 0.5 < noisy["top10_overlap"] < 1.0 and noisy["cosine_min"] < noisy["cosine_mean"] < 1
    unrelated = top_k_overlap(torch.randn(200, 16), ref)
    assert unrelated < 0.2  # about 10/199 by chance
