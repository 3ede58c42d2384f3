"""The encode stage, the deep-compression recipe, and coder choices that decode alike."""

import math

import torch

import modelzip as mz
from modelzip import mzip
from modelzip.codec import format as fmt
from modelzip.codec.codecs import Option, choose
from modelzip.context import Context
from modelzip.recipe import Recipe, builtin_recipes
from modelzip.registry import get_method
from modelzip.train import Trainer


def test_deep_compression_recipe_is_built_in() -> None:
    assert "deep-compression" in builtin_recipes()
    methods = [s.method for s in Recipe.load("deep-compression").stages]
    assert methods[0] == "prune" and methods[-1] == "encode"
    assert methods.index("prune") < methods.index("cluster") < len(methods) - 1
    assert "finetune" in methods[methods.index("cluster") :]  # trained centroids


def test_coders_change_bytes_not_weights() -> None:
    data = mz.load_data("digits")
    model = mz.load_model("zoo:lenet300", data=data)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    for stage in (
        {"method": "prune", "sparsity": 0.9},
        {"method": "cluster", "bits": 5, "include_bias": True},
    ):
        m = get_method(stage.pop("method"))
        model = m.apply(model, m.config.parse(stage), ctx)
    sizes, states, codecs = {}, {}, {}
    choices = {c: {"coder": c} for c in ("ans", "huffman", "zstd", "packed", "raw", "auto")}
    choices["smallest"] = {"coder": "auto", "decode_budget_ms": None}
    for label, cfg in choices.items():
        enc = get_method("encode")
        model = enc.apply(model, enc.config.parse(cfg), ctx)
        blob = mzip.to_bytes(model)
        sizes[label] = len(blob)
        states[label] = mzip.from_bytes(blob)[0].state_dict()
        header, _ = fmt.read_header(blob)
        codecs[label] = {
            f["codec"] for t in header["tensors"].values() for f in t["fields"].values()
        }
    assert sizes["ans"] < sizes["packed"] < sizes["raw"]
    assert sizes["zstd"] < sizes["packed"]
    assert sizes["ans"] <= sizes["huffman"]
    assert sizes["smallest"] <= min(sizes.values())
    # the default decodes at memory speed: no symbol-by-symbol coder, yet close to the smallest
    assert not any("ans" in c or "huffman" in c for c in codecs["auto"])
    assert (
        sizes["auto"] <= min(sizes["zstd"], sizes["packed"]) and sizes["auto"] < 1.05 * sizes["ans"]
    )
    for coder, state in states.items():
        for k, v in state.items():
            assert torch.equal(v, states["raw"][k]), (coder, k)


def test_decode_budget_goes_where_slow_coders_save_most() -> None:
    fast = [Option("zstd", bytes(100), 0.0), Option("zstd", bytes(100), 0.0)]
    slow = [Option("ans", bytes(90), 1e6), Option("ans", bytes(50), 1e6)]  # 10 vs 50 B saved
    options = list(zip(fast, slow, strict=True))
    assert [o.codec for o in choose(options, 0.0)] == ["zstd", "zstd"]
    assert [o.codec for o in choose(options, 1.5e6)] == ["zstd", "ans"]
    assert [o.codec for o in choose(options, math.inf)] == ["ans", "ans"]
    assert choose([(fast[0], None)], math.inf) == [fast[0]]


def test_round_floats_is_explicit_and_stored_in_16_bits() -> None:
    data = mz.load_data("digits")
    model = mz.load_model("zoo:lenet300", data=data)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    enc = get_method("encode")
    model = enc.apply(model, enc.config.parse({"round_floats": "fp16"}), ctx)
    n = model.fc1.weight.numel()
    _, parts = fmt.read_header(mzip.to_bytes(model))
    assert len(parts["fc1.weight/values"]) <= 2 * n  # 16 bits or fewer per value
    plain = mz.load_model("zoo:lenet300", data=data)
    _, parts = fmt.read_header(mzip.to_bytes(plain))
    assert len(parts["fc1.weight/values"]) > 3 * n  # fp32 weights: no silent rounding


def test_large_tensors_pick_their_codec_by_a_sample_with_the_same_result(monkeypatch):
    from modelzip.codec import codecs

    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(1200, 1024, generator=gen).mul(3).round().clamp(-7, 8).add(7)
    t = codes.to(torch.uint8)  # 1.2M peaked 4-bit codes, over codecs.SAMPLE_MIN
    assert t.numel() > codecs.SAMPLE_MIN
    sampled = codecs.encode_options(t, slow=False)
    monkeypatch.setattr(codecs, "SAMPLE_MIN", 1 << 40)
    full = codecs.encode_options(t, slow=False)
    assert sampled[0].codec == full[0].codec and sampled[0].data == full[0].data
    assert sampled[1] is None and full[1] is None  # slow coders skipped when not wanted
    with_slow = codecs.encode_options(t)
    assert with_slow[1] is not None and with_slow[1].decode_ns > 0
