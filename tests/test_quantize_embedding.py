"""Weight-only quantization of embedding tables (per token row, or per group along the
embedding dimension), on the real MiniLM word-embedding table and a tiny random BERT."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.codec import codecs
from modelzip.context import Context
from modelzip.errors import ConfigError
from modelzip.nn.constraints import AffineQuant, constraints_of, decode, iter_state
from modelzip.nn.registry import CONSTRAINT_KINDS
from modelzip.registry import get_method
from modelzip.testing.user_models import write_tiny_bert
from modelzip.train import Trainer
from modelzip.zoo.text import minilm_dir, tokenize


def quantize(model: nn.Module, **fields) -> tuple[nn.Module, dict]:
    method = get_method("quantize")
    ctx = Context(data=None, trainer=Trainer(progress=False))  # type: ignore[arg-type]
    return method.apply(model, method.config.parse(fields), ctx), ctx.notes


@pytest.fixture(scope="module")
def word_table() -> torch.Tensor:
    state = load_file(str(Path(minilm_dir()) / "model.safetensors"))
    return state["embeddings.word_embeddings.weight"]


def through_codecs(fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every field stored and read back by the codec the packer would pick (the big code
    table with the fast ``packed`` coder, to keep the test quick)."""
    out = {}
    for name, t in fields.items():
        coder = "packed" if t.numel() > 1_000_000 else "auto"
        codec, data = codecs.encode_smallest(t, coder)
        flat = codecs.get_codec(codec).decode_shaped(memoryview(data), t.dtype, list(t.shape))
        out[name] = flat.reshape(t.shape)
        if name == "qdata" and coder == "packed":
            assert len(data) <= t.numel() // 2 + 16  # 4-bit codes take half a byte each
    return out


@pytest.mark.parametrize(
    ("granularity", "group_size", "scale_shape"),
    [("channel", None, (30522, 1)), ("group", 64, (30522, 6, 1))],
)
def test_real_minilm_word_table_4bit(word_table, granularity, group_size, scale_shape):
    model = nn.Sequential(nn.Embedding.from_pretrained(word_table.clone(), freeze=False))
    fields = {"granularity": granularity, "group_size": group_size}
    model, notes = quantize(model, bits=4, scheme="asymmetric", layers=["Embedding"], **fields)
    q = constraints_of(model[0], "weight")[-1]
    assert isinstance(q, AffineQuant) and q.group_size == group_size
    w_hat = model[0].weight.detach()
    enc = q.encode(word_table)
    assert enc.fields["qdata"].dtype == torch.uint8 and enc.fields["qdata"].shape == (30522, 384)
    assert int(enc.fields["qdata"].max()) <= 15
    scale = enc.fields["scale"]
    assert tuple(scale.shape) == scale_shape
    # each value within half a step of its row's (group's) grid
    err = (word_table - w_hat).abs().reshape(30522, -1, group_size or 384)
    step = scale.reshape(30522, -1, 1)
    assert bool((err <= step * 0.5 * (1 + 1e-5) + 1e-8).all())
    back = decode(type(enc)(enc.kind, through_codecs(enc.fields), enc.meta), CONSTRAINT_KINDS)
    assert torch.equal(back, w_hat)  # bit-exact through the codecs
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert torch.equal(model(ids), back[ids])
    assert notes["layers"]["0"]["sqnr_db"] > (18 if group_size else 15)


def test_groups_beat_rows_on_the_real_table(word_table):
    rows = nn.Sequential(nn.Embedding.from_pretrained(word_table[:4000].clone()))
    groups = copy.deepcopy(rows)
    _, by_row = quantize(rows, bits=4, scheme="asymmetric", layers=["Embedding"])
    _, by_group = quantize(
        groups,
        bits=4,
        scheme="asymmetric",
        layers=["Embedding"],
        granularity="group",
        group_size=32,
    )
    assert by_group["layers"]["0"]["mse"] < 0.8 * by_row["layers"]["0"]["mse"]


def test_padding_row_stays_zero_and_bad_group_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 48, padding_idx=0))
    model, _ = quantize(model, bits=3, scheme="asymmetric", layers=["Embedding"])
    assert torch.equal(model[0].weight[0], torch.zeros(48))
    with pytest.raises(ConfigError, match="group_size 32 does not divide its 48"):
        quantize(
            nn.Sequential(nn.Embedding(50, 48)),
            bits=4,
            layers=["Embedding"],
            granularity="group",
            group_size=32,
        )


def test_tiny_bert_embeddings_and_linears_save_load(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder))
    ids = tokenize(["a small test sentence", "another one, longer than the first"])
    with torch.no_grad():
        ref = model(ids)
    model, notes = quantize(
        model,
        bits={"default": 4, "Embedding": 8},
        scheme="asymmetric",
        granularity="group",
        group_size=32,
        layers=["Embedding", "Linear"],
    )
    word = "encoder.embeddings.word_embeddings"
    assert notes["layers"][word]["bits"] == 8
    assert notes["layers"]["encoder.encoder.layer.0.attention.self.query"]["bits"] == 4
    kinds = {name: enc.kind for name, enc in iter_state(model)}
    assert kinds[f"{word}.weight"] == "affine"
    back, header = mzip.from_bytes(mzip.to_bytes(model))
    assert header["tensors"][f"{word}.weight"]["fields"]["qdata"]["dtype"] == "u8"
    with torch.no_grad():
        out = model(ids)
        assert torch.equal(back(ids), out)
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    assert float(cos.min()) > 0.9
