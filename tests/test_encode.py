"""The encode stage, the deep-compression recipe, and coder choices that decode alike."""

import torch

import modelzip as mz
from modelzip.codec import container
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
    sizes, states = {}, {}
    for coder in ("ans", "huffman", "packed", "raw", "auto"):
        enc = get_method("encode")
        model = enc.apply(model, enc.config.parse({"coder": coder}), ctx)
        blob = container.to_bytes(model)
        sizes[coder] = len(blob)
        states[coder] = container.from_bytes(blob)[0].state_dict()
    assert sizes["ans"] < sizes["packed"] < sizes["raw"]
    assert sizes["ans"] <= sizes["huffman"]
    assert sizes["auto"] <= min(sizes.values())
    for coder, state in states.items():
        for k, v in state.items():
            assert torch.equal(v, states["raw"][k]), (coder, k)


def test_round_floats_is_explicit_and_stored_in_16_bits() -> None:
    data = mz.load_data("digits")
    model = mz.load_model("zoo:lenet300", data=data)
    ctx = Context(data=data, trainer=Trainer(progress=False))
    enc = get_method("encode")
    model = enc.apply(model, enc.config.parse({"round_floats": "fp16"}), ctx)
    header, _ = container.read_header(container.to_bytes(model))
    assert header["tensors"]["fc1.weight"]["fields"]["values"]["codec"] == "f16"
    plain = mz.load_model("zoo:lenet300", data=data)
    header, _ = container.read_header(container.to_bytes(plain))
    assert header["tensors"]["fc1.weight"]["fields"]["values"]["codec"] == "raw"
