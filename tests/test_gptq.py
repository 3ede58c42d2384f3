"""Low-bit group-wise codes, GPTQ, AWQ scaling and the ``gptq`` method and recipes."""

from __future__ import annotations

import copy

import pytest
import torch
from support import CalibrationOnly
from torch import nn

import modelzip as mz
from modelzip import mzip
from modelzip.codec import codecs, pack
from modelzip.codec import format as fmt
from modelzip.codec.inspect import inspect_detail, layer_summary
from modelzip.context import Context
from modelzip.errors import ConfigError, FormatError, UnsupportedError
from modelzip.methods import _gptq_tune as tuning
from modelzip.nn.constraints import Encoded, constraints_of, decode, iter_state
from modelzip.nn.lowbit import GroupCodes, center
from modelzip.nn.registry import CONSTRAINT_KINDS
from modelzip.ops import gptq as ops
from modelzip.recipe import Recipe
from modelzip.registry import get_method
from modelzip.testing import user_models as um
from modelzip.train import Trainer


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    return torch.randn(n, k, generator=g) @ mix * (torch.rand(k, generator=g) * 3)


@pytest.mark.parametrize(("bits", "group"), [(4, 32), (3, 64), (4, None), (2, 64)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_round_to_nearest(bits, group, act_order):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 128, generator=g)
    both = correlated_inputs(2048, 128)
    x, held_out = both[:1024], both[1024:]  # same distribution, other samples
    res = ops.gptq(w, ops.hessian(x), bits=bits, group_size=group, act_order=act_order)
    near = ops.rtn(w, bits=bits, group_size=group)
    assert ops.output_error(x, w, res.w_hat) < 0.8 * ops.output_error(x, w, near.w_hat)
    assert ops.output_error(held_out, w, res.w_hat) < ops.output_error(held_out, w, near.w_hat)
    # the result is exactly its codes on the grid
    assert int(res.qdata.max()) < 2**bits and res.qdata.dtype == torch.uint8
    assert torch.equal(res.w_hat, ops.dequantize_grouped(res.qdata, res.scale, res.zero_point))
    assert torch.equal(res.scale, res.scale.half().float())  # fp16-exact scales


def stored_entropy(codes: ops.Codes, bits: int) -> float:
    """Bits per weight of the centered codes the file's entropy coder sees (order 0)."""
    p = torch.bincount(center(codes.qdata, codes.zero_point, bits).long().flatten()).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


@pytest.mark.parametrize("bits", [3, 4])
def test_rate_weight_shortens_gptq_codes_below_nearest_and_keeps_its_error_lower(bits):
    torch.manual_seed(3)
    # heavy-tailed weights (as trained layers have): most codes sit next to the zero point
    w = torch.distributions.Laplace(0.0, 1.0).sample((64, 256)) * 0.05
    both = correlated_inputs(2048, 256)
    x, held_out = both[:1024], both[1024:]
    h = ops.hessian(x)
    near = ops.rtn(w, bits=bits, group_size=64)
    plain = ops.gptq(w, h, bits=bits, group_size=64, act_order=True)
    lighter = ops.gptq(w, h, bits=bits, group_size=64, act_order=True, rate_weight=0.2)
    rated = ops.gptq(w, h, bits=bits, group_size=64, act_order=True, rate_weight=0.4)
    # plain GPTQ's error-compensated codes are longer than rounding's (strongly correlated
    # inputs: +2-6% here); the rate term shortens them step by step, below rounding's
    entropies = [stored_entropy(c, bits) for c in (plain, lighter, rated)]
    assert entropies == sorted(entropies, reverse=True)
    assert entropies[0] > stored_entropy(near, bits) > entropies[2]
    for inputs in (x, held_out):
        assert ops.output_error(inputs, w, rated.w_hat) < ops.output_error(inputs, w, near.w_hat)
    assert torch.equal(
        rated.w_hat, ops.dequantize_grouped(rated.qdata, rated.scale, rated.zero_point)
    )
    lengths = ops.code_lengths(near, bits)
    assert lengths.shape == (2**bits,) and bool(torch.isfinite(lengths).all())
    assert int(lengths.argmin()) == 0  # the zero point's own code is the most frequent


def test_rate_weight_is_checked():
    w, h = torch.randn(4, 16), torch.eye(16)
    with pytest.raises(ValueError, match="rate_weight"):
        ops.gptq(w, h, bits=4, rate_weight=-1.0)
    grid = (torch.ones(4), torch.full((4,), 127.0), 254)
    with pytest.raises(ValueError, match="fitted grids"):
        ops.gptq(w, h, bits=8, grid=grid, rate_weight=0.1)
    with pytest.raises(ConfigError, match="rate_weight"):
        get_method("gptq").config.parse({"rate_weight": -0.5})


@pytest.mark.parametrize("bits", [3, 4])
def test_rate_aware_gptq_shrinks_a_trained_lenet300_file_and_keeps_accuracy(bits, lenet300, digits):
    from modelzip.eval.evaluate import accuracy

    m = get_method("gptq")
    stage = {
        "bits": bits,
        "group_size": 64,
        "calibration_split": "train",
        "calibration_batches": 16,
    }
    out = {}
    for name, over in {
        "rtn": {"algorithm": "rtn"},
        "plain": {},
        "rated": {"rate_weight": 0.2},
    }.items():
        ctx = Context(data=digits, trainer=Trainer(progress=False))
        model = m.apply(copy.deepcopy(lenet300), m.config.parse(stage | over), ctx)
        blob = mzip.to_bytes(model)
        out[name] = (len(blob), accuracy(mzip.from_bytes(blob)[0], digits.test))
    assert out["rated"][0] < out["plain"][0]
    assert out["rated"][1] >= out["rtn"][1] - 1e-9


def test_train_split_calibration_does_not_depend_on_earlier_reads(lenet300):
    # a shuffled train loader gives a new order each read (baseline training, other stages)
    data = mz.load_data("digits")
    m = get_method("gptq")
    cfg = m.config.parse({"bits": 4, "calibration_split": "train", "calibration_batches": 2})
    codes = []
    for _ in range(2):
        model = m.apply(copy.deepcopy(lenet300), cfg, Context(data=data, trainer=None))
        codes.append([c.qdata for _, c in tuning.group_codes(model)])
        for _ in data.train:  # another reader in between
            pass
    assert all(torch.equal(a, b) for a, b in zip(*codes, strict=True))


def test_rtn_is_within_half_a_step_without_clipping():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(0))
    c = ops.rtn(w, bits=4, group_size=64, clip_search=False)
    step = c.scale.repeat_interleave(64, dim=1)
    assert bool(((w - c.w_hat).abs() <= step / 2 + 1e-6).all())
    clipped = ops.rtn(w, bits=4, group_size=64)
    assert ops.output_error(torch.eye(256), w, clipped.w_hat) <= ops.output_error(
        torch.eye(256), w, c.w_hat
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_group_codes_pack_unpack_exact(bits, group):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(bits))
    codes = ops.rtn(w, bits=bits, group_size=group)
    c = GroupCodes.from_codes(codes, bits=bits, shape=(24, 256))
    enc = c.encode(w)
    stored = {}
    for name, t in enc.fields.items():
        codec, data = codecs.encode_smallest(t, "packed")
        if name == "qdata":  # sub-byte bit packing: exactly ``bits`` bits a code
            codec, data = "packed", codecs.get_codec("packed").encode(t)
            assert len(data) <= t.numel() * bits // 8 + 16
        if name == "scale":
            assert codecs.get_codec("f16").applies_to(t)  # scales fit 16 bits exactly
        flat = codecs.get_codec(codec).decode_shaped(memoryview(data), t.dtype, list(t.shape))
        stored[name] = flat.reshape(t.shape)
    assert torch.equal(decode(Encoded(enc.kind, stored, enc.meta), CONSTRAINT_KINDS), codes.w_hat)
    assert torch.equal(c(w), codes.w_hat)


def test_group_codes_refuse_fields_that_do_not_fit():
    codes = ops.rtn(torch.randn(4, 64), bits=4, group_size=32)
    fields = {"qdata": codes.qdata, "scale": codes.scale, "zero_point": codes.zero_point}
    with pytest.raises(FormatError, match="do not fit"):
        GroupCodes.decode({**fields, "scale": codes.scale[:2]}, {"bits": 4})
    with pytest.raises(FormatError, match="exceeds 2 bits"):
        GroupCodes.decode(fields, {"bits": 2})
    with pytest.raises(FormatError, match="need field"):
        GroupCodes.decode({"qdata": codes.qdata}, {"bits": 4})


def test_awq_scales_never_worse_than_none():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(2048, 128)
    h = ops.hessian(x)
    s, alpha = ops.awq_scales(w, h, x.abs().mean(0), bits=3, group_size=64)
    plain = ops.weighted_error(h, w, ops.rtn(w, bits=3, group_size=64).w_hat)
    scaled = ops.weighted_error(h, w, ops.rtn(w * s, bits=3, group_size=64).w_hat / s)
    assert scaled <= plain and 0 <= alpha <= 1


def test_rank_deficient_hessian_is_dampened_never_nan():
    w = torch.randn(8, 64)
    x = torch.randn(10, 64)  # 10 samples, 64 inputs
    res = ops.gptq(w, ops.hessian(x), bits=4, group_size=32)
    assert bool(torch.isfinite(res.w_hat).all())
    zero_h = torch.zeros(64, 64)  # no information at all: plain rounding
    res = ops.gptq(w, zero_h, bits=4, group_size=32)
    assert torch.equal(res.w_hat, ops.rtn(w, bits=4, group_size=32).w_hat)


def run_gptq(model, batches, cfg=None, **fields):
    method = get_method("gptq")
    ctx = Context(data=CalibrationOnly(batches), trainer=Trainer(progress=False))  # type: ignore[arg-type]
    return method.apply(model, cfg or method.config.parse(fields), ctx), ctx.notes


def test_too_small_calibration_set_falls_back_with_a_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    model, notes = run_gptq(model, [torch.randn(10, 64)], bits=4, group_size=32)
    first = notes["layers"]["0"]
    assert first["algorithm"] == "rtn" and "10 calibration rows < 64 inputs" in first["why_rtn"]
    assert notes["layers"]["2"]["algorithm"] == "rtn"  # 10 rows < 32 inputs too
    assert all(bool(torch.isfinite(m.weight).all()) for m in (model[0], model[2]))


def test_layers_are_quantized_from_already_quantized_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 16))
    x = torch.randn(512, 32)
    ref = copy.deepcopy(model)
    model, notes = run_gptq(model, [x], bits=3, group_size=32, act_order=True)
    assert [notes["layers"][n]["algorithm"] for n in ("0", "2")] == ["gptq", "gptq"]
    # the second layer's Hessian came from the first layer's *quantized* outputs
    h_in = torch.tanh(x @ model[0].weight.T + model[0].bias)
    rtn2 = ops.rtn(ref[2].weight.detach(), bits=3, group_size=32)
    err_gptq = ops.output_error(h_in, ref[2].weight.detach(), model[2].weight.detach())
    assert err_gptq < ops.output_error(h_in, ref[2].weight.detach(), rtn2.w_hat)
    assert notes["layers"]["2"]["rel_error"] < notes["layers"]["2"]["rtn_rel_error"]


def test_average_bits_budget_is_respected_and_noted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.Linear(128, 8))
    _, notes = run_gptq(model, [torch.randn(512, 64)], average_bits=3.5, group_size=32)
    chosen = {n: r["bits"] for n, r in notes["layers"].items()}
    sizes = {"0": 64 * 128, "2": 128 * 128, "3": 128 * 8}
    avg = sum(chosen[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert avg <= 3.5 and notes["average_bits"] == pytest.approx(avg, abs=1e-3)
    assert len(set(chosen.values())) > 1  # really mixed


def test_gptq_refuses_a_layer_that_already_has_a_constraint(digits):
    model = nn.Sequential(nn.Linear(64, 10))
    get_method("quantize").apply(
        model, get_method("quantize").config.parse({"bits": 8}), Context(data=digits, trainer=None)
    )
    with pytest.raises(UnsupportedError, match="already carries"):
        run_gptq(model, [torch.randn(256, 64)])


def test_tiny_bert_gptq_4bit_compresses_saves_loads_and_embeds(tmp_path):
    folder = um.write_tiny_bert(tmp_path / "bert")
    data = mz.load_data("sentences")
    model = mz.load_model(str(folder))
    result = mz.compress(model, data, "gptq-4bit", out=tmp_path / "b.mzip", measure_latency=False)
    notes = result["stages"][0]["notes"]["layers"]
    assert notes["encoder.embeddings.word_embeddings"]["algorithm"] == "rtn"
    assert notes["encoder.encoder.layer.1.output.dense"]["algorithm"] == "gptq"
    assert result["compressed"]["cosine_mean"] > 0.95
    assert result["ratio"] > 5
    loaded = mz.load(tmp_path / "b.mzip")
    x = data.example(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), result["model"](x))


@pytest.mark.parametrize("factory", [um.residual_cnn, um.depthwise_cnn, um.concat_net])
def test_gptq_recipes_fit_user_cnns(factory, digits):
    torch.manual_seed(0)
    model = factory().eval()
    x = digits.example(8)
    with torch.no_grad():
        ref = model(x)
    recipe = Recipe.load("gptq-3bit")
    model, notes = run_gptq(model, [x for x, _ in digits.val], recipe.stages[0])
    assert notes["layers"] and all(constraints_of(m, "weight") for m in notes_layers(model, notes))
    back, _ = mzip.from_bytes(mzip.to_bytes(model), model=factory())
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        assert torch.nn.functional.cosine_similarity(model(x), ref).mean() > 0.9
    kinds = {enc.kind for _, enc in iter_state(model)}
    assert "group-codes" in kinds


def notes_layers(model, notes):
    return [model.get_submodule(n) for n in notes["layers"]]


@pytest.mark.parametrize("recipe", ["gptq-4bit", "gptq-3bit"])
def test_gptq_recipes_keep_lenet300_accuracy(recipe, lenet300, digits):
    from modelzip.eval.evaluate import accuracy

    base = accuracy(lenet300, digits.test)
    cfg = Recipe.load(recipe).stages[0]
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    model = get_method("gptq").apply(copy.deepcopy(lenet300), cfg, ctx)
    assert "edge_layers" not in ctx.notes  # every layer at the recipe's width (as RTN rows)
    assert {n["bits"] for n in ctx.notes["layers"].values()} == {int(recipe[5])}
    back, _ = mzip.from_bytes(mzip.to_bytes(model))
    assert accuracy(back, digits.test) >= base - 0.03


def test_block_inputs_capture_equals_whole_model_and_skips_padding(tmp_path):
    from modelzip.methods import _gptq_calib as calib

    folder = um.write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder))
    data = mz.load_data("sentences")
    batches = [x for x, _ in data.val][:2]
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in n
    }
    order, _ = calib.call_order(model, layers, batches)
    later = order[4:]  # the first round of layer 1 is reached through block 0 and block 1
    assert calib.block_of(model, later[0]) == "encoder.encoder.layer.0"
    whole = calib.capture(model, layers, later, batches)
    cache = calib.BlockInputs()
    cached = calib.capture(model, layers, later, batches, cache)
    assert cache.name == "encoder.encoder.layer.0" and len(cache.calls) == len(batches)
    assert whole.keys() == cached.keys() and whole
    real = sum(int((x != 0).sum()) for x in batches)
    assert real < sum(x.numel() for x in batches)  # the batches do hold padding
    for name in whole:
        assert whole[name].rows == cached[name].rows == real  # padding rows left out
        assert torch.allclose(whole[name].hessian(), cached[name].hessian(), atol=1e-6)


def test_group_codes_are_stored_centred_and_old_uncentred_files_still_decode():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) + torch.rand(64, 1, generator=g)  # zero points vary
    codes = ops.rtn(w, bits=4, group_size=64)
    c = GroupCodes.from_codes(codes, bits=4, shape=(64, 256))
    enc = c.encode(torch.empty(0))
    assert enc.meta == {"bits": 4, "centered": True}
    assert not torch.equal(enc.fields["qdata"], codes.qdata)
    assert torch.equal(decode(enc, CONSTRAINT_KINDS), codes.w_hat)  # exact round trip
    legacy = Encoded(enc.kind, {**enc.fields, "qdata": codes.qdata.clone()}, {"bits": 4})
    assert torch.equal(decode(legacy, CONSTRAINT_KINDS), codes.w_hat)
    stored = len(codecs.get_codec("zstd").encode(enc.fields["qdata"]))
    assert stored < len(codecs.get_codec("zstd").encode(codes.qdata))  # a shorter code
    with pytest.raises(FormatError, match="centered"):
        decode(Encoded(enc.kind, enc.fields, {"bits": 4, "centered": 1}), CONSTRAINT_KINDS)


def per_width_codes(seed: int = 0) -> tuple[torch.Tensor, ops.Codes, torch.Tensor]:
    """A table whose 9 "used" rows get 8 bits and the rest 3."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(40, 128, generator=g) + torch.rand(40, 1, generator=g)
    row_bits = torch.full((40,), 3, dtype=torch.uint8)
    row_bits[torch.randperm(40, generator=g)[:9]] = 8
    return w, ops.rtn_by_row(w, row_bits, group_size=64), row_bits


def test_rows_with_their_own_widths_pack_and_unpack_exactly():
    w, codes, row_bits = per_width_codes()
    for b in (3, 8):  # each width's rows are rounded on that width's grid
        alone = ops.rtn(w[row_bits == b], bits=b, group_size=64)
        assert torch.equal(alone.w_hat, codes.w_hat[row_bits == b])
        assert torch.equal(alone.qdata, codes.qdata[row_bits == b])
    c = GroupCodes.from_codes(codes, bits=8, shape=(40, 128), row_bits=row_bits)
    enc = c.encode(torch.empty(0))
    assert enc.meta["row_widths"] == [3, 8] and "qdata" not in enc.fields
    assert enc.fields["qdata3"].shape == (31, 128) and enc.fields["qdata8"].shape == (9, 128)
    stored = {}
    for name, t in enc.fields.items():
        codec, data = codecs.encode_smallest(t, "packed")
        flat = codecs.get_codec(codec).decode_shaped(memoryview(data), t.dtype, list(t.shape))
        stored[name] = flat.reshape(t.shape)
    packed3 = codecs.get_codec("packed").encode(enc.fields["qdata3"])
    assert len(packed3) <= 31 * 128 * 3 // 8 + 16  # the narrow rows cost their own width
    assert torch.equal(decode(Encoded(enc.kind, stored, enc.meta), CONSTRAINT_KINDS), codes.w_hat)
    assert torch.equal(c(torch.empty(0)), codes.w_hat)


def test_per_width_fields_that_do_not_fit_are_refused():
    _, codes, row_bits = per_width_codes()
    enc = GroupCodes.from_codes(codes, bits=8, shape=(40, 128), row_bits=row_bits).encode(
        torch.empty(0)
    )
    f, meta = enc.fields, enc.meta
    cases = [
        ({**f, "qdata8": f["qdata8"][:5]}, meta, "qdata8 does not fit"),
        ({k: v for k, v in f.items() if k != "qdata3"}, meta, "qdata3"),
        (f, {**meta, "row_widths": [8]}, "row_widths does not match"),
        ({**f, "row_bits": torch.full((40,), 2, dtype=torch.uint8)}, meta, "does not match"),
        ({**f, "row_bits": row_bits.to(torch.int32)}, meta, "u8"),
        (f, {**meta, "bits": 4}, "row widths must be 1..4"),
    ]
    for fields, m, message in cases:
        with pytest.raises(FormatError, match=message):
            GroupCodes.decode(fields, m)
    wide = {**f, "qdata3": torch.full_like(f["qdata3"], 9)}  # a 3-bit row holding 9
    with pytest.raises(FormatError, match="exceeds its row's width"):
        GroupCodes.decode(wide, meta)


def test_tiny_bert_used_embedding_rows_get_more_bits_and_round_trip(tmp_path):
    folder = um.write_tiny_bert(tmp_path / "bert")
    data = mz.load_data("sentences")
    model = mz.load_model(str(folder))
    stage = {"method": "gptq", "bits": 3, "group_size": 64, "used_rows_bits": 8}
    recipe = Recipe.from_dict({"stages": [stage]})
    result = mz.compress(model, data, recipe, out=tmp_path / "b.mzip", measure_latency=False)
    table = result["stages"][0]["notes"]["layers"]["encoder.embeddings.word_embeddings"]
    used = table["used_rows"]
    assert 0 < used < 30522 and table["rows_at_bits"] == {"8": used, "3": 30522 - used}
    header, parts = fmt.read_header((tmp_path / "b.mzip").read_bytes())
    stored = pack.decode_fields(header, parts, 1 << 26)["encoder.embeddings.word_embeddings.weight"]
    assert int((stored["row_bits"] == 8).sum()) == used == stored["qdata8"].shape[0]
    info, detail = inspect_detail((tmp_path / "b.mzip").read_bytes())
    bits = {r["layer"]: r["bits"] for r in layer_summary(info, detail)}
    assert bits["encoder.embeddings.word_embeddings"] == 3  # the width of most rows
    assert bits["encoder.encoder.layer.0.attention.self.query"] == 3
    loaded = mz.load(tmp_path / "b.mzip")
    x = data.example(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), result["model"](x))
    plain = mz.compress(
        mz.load_model(str(folder)),
        data,
        Recipe.from_dict({"stages": [{**stage, "used_rows_bits": None}]}),
        measure_latency=False,
    )
    assert result["compressed"]["cosine_mean"] > plain["compressed"]["cosine_mean"]
    for bad in (9, True, 1):
        with pytest.raises(ConfigError, match="used_rows_bits"):
            Recipe.from_dict({"stages": [{**stage, "used_rows_bits": bad}]})


def spread_scales_codes(octaves: float, seed: int = 0) -> ops.Codes:
    """RTN codes of a matrix whose groups' ranges span ``octaves`` within each row."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.exp2(-octaves * torch.rand(24, 8, 1, generator=g))
    w = (torch.randn(24, 8, 32, generator=g) * spread).reshape(24, 256)
    return ops.rtn(w, bits=4, group_size=32)


def test_log_scales_stay_within_a_percent_and_round_trip_exactly():
    codes = spread_scales_codes(octaves=5.0)
    c = GroupCodes.from_codes(codes, bits=4, shape=(24, 256), scale_bits=8)
    assert c.scale_bits == 8
    rel = (c.scale / codes.scale - 1).abs()
    assert float(rel.max()) <= 2 ** (1 / 64) - 1 + 1e-6 and float(rel.max()) > 0
    enc = c.encode(torch.empty(0))
    assert "scale" not in enc.fields and enc.meta["scale_bits"] == 8
    assert enc.fields["scale_log"].dtype == torch.uint8
    assert enc.fields["scale_top"].dtype == torch.float16
    stored = {}
    for name, t in enc.fields.items():  # through the real codecs
        codec, data = codecs.encode_smallest(t, "auto")
        stored[name] = (
            codecs.get_codec(codec)
            .decode_shaped(memoryview(data), t.dtype, list(t.shape))
            .reshape(t.shape)
        )
    assert torch.equal(
        decode(Encoded(enc.kind, stored, enc.meta), CONSTRAINT_KINDS), c(torch.empty(0))
    )
    # the value is what the codes say with the rounded scales, nothing else moved
    assert torch.equal(
        c(torch.empty(0)), ops.dequantize_grouped(codes.qdata, c.scale, codes.zero_point)
    )
    zstd = codecs.get_codec("zstd")
    log_bytes = len(zstd.encode(enc.fields["scale_log"])) + len(
        zstd.encode(enc.fields["scale_top"])
    )
    assert log_bytes < 0.75 * len(zstd.encode(codes.scale.half()))
    before = c.scale.clone()
    c.set_scale(c.scale)  # idempotent: a grid value stays where it is
    assert torch.equal(c.scale, before)


def test_scales_beyond_eight_octaves_or_too_few_groups_keep_fp16():
    wide = spread_scales_codes(octaves=12.0)
    few = ops.rtn(torch.randn(24, 96), bits=4, group_size=32)  # 3 groups a row
    for codes in (wide, few):
        c = GroupCodes.from_codes(codes, bits=4, shape=tuple(codes.qdata.shape), scale_bits=8)
        assert c.scale_bits == 16 and c.wanted_scale_bits == 8
        assert torch.equal(c.scale, codes.scale)
        enc = c.encode(torch.empty(0))
        assert "scale" in enc.fields and "scale_bits" not in enc.meta


def test_log_scale_fields_that_do_not_fit_are_refused():
    c = GroupCodes.from_codes(spread_scales_codes(3.0), bits=4, shape=(24, 256), scale_bits=8)
    enc = c.encode(torch.empty(0))
    f, meta = enc.fields, enc.meta
    cases = [
        ({**f, "scale_log": f["scale_log"].to(torch.int32)}, meta, "scale_log must be"),
        ({**f, "scale_top": f["scale_top"][:5]}, meta, "scale_top must be 24"),
        ({**f, "scale_top": -f["scale_top"]}, meta, "finite and positive"),
        ({**f, "scale_top": f["scale_top"] * float("nan")}, meta, "finite and positive"),
        (f, {**meta, "scale_bits": 9}, "scale_bits must be 8 or 16"),
        ({k: v for k, v in f.items() if k != "scale_top"}, meta, "scale_top"),
    ]
    for fields, m, message in cases:
        with pytest.raises(FormatError, match=message):
            GroupCodes.decode(fields, m)
    with pytest.raises(FormatError, match="scale_bits must be 8 or 16"):
        GroupCodes.from_codes(spread_scales_codes(3.0), bits=4, shape=(24, 256), scale_bits=12)


def test_tiny_bert_log_scales_shrink_the_file_and_round_trip(tmp_path):
    folder = um.write_tiny_bert(tmp_path / "bert")
    data = mz.load_data("sentences")
    sizes, cosines = {}, {}
    for scale_bits in (16, 8):
        model = mz.load_model(str(folder))
        stage = {"method": "gptq", "bits": 4, "group_size": 8, "scale_bits": scale_bits}
        stage |= {"tune_scales": 4, "calibration_batches": 2}
        out = tmp_path / f"s{scale_bits}.mzip"
        result = mz.compress(
            model, data, Recipe.from_dict({"stages": [stage]}), out=out, measure_latency=False
        )
        notes = result["stages"][0]["notes"]
        if scale_bits == 8:
            assert notes["tensors_by_scale_bits"]["8"] > 0
            assert notes["tune"]["steps"] == 4  # tuned scales are put back on the log grid
        sizes[scale_bits], cosines[scale_bits] = (
            out.stat().st_size,
            result["compressed"]["cosine_mean"],
        )
        loaded = mz.load(out)
        x = data.example(4)
        with torch.no_grad():
            assert torch.equal(loaded(x), result["model"](x))
    assert sizes[8] < sizes[16]
    assert cosines[8] > cosines[16] - 0.002


def test_log_scales_keep_lenet300_accuracy(lenet300, digits):
    from modelzip.eval.evaluate import accuracy

    base = accuracy(lenet300, digits.test)
    cfg = get_method("gptq").config.parse({"bits": 4, "group_size": 64, "scale_bits": 8})
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    model = get_method("gptq").apply(copy.deepcopy(lenet300), cfg, ctx)
    # on digits' 64 inputs only fc2 (300 inputs: 5 groups a row) has enough groups for log codes
    assert ctx.notes["tensors_by_scale_bits"] == {"8": 1, "16": 2}
    assert [c.scale_bits for _, c in tuning.group_codes(model)] == [16, 8, 16]
    back, _ = mzip.from_bytes(mzip.to_bytes(model))
    assert accuracy(back, digits.test) >= base - 0.03


@pytest.mark.parametrize(
    "factory",
    [
        um.residual_cnn,
        um.depthwise_cnn,
        um.concat_net,
        lambda: nn.Sequential(nn.Flatten(), um.tabular_mlp(64, 10)),
    ],
)
def test_log_scales_fit_user_models(factory, digits):
    torch.manual_seed(0)
    model = factory().eval()
    x = digits.example(16)
    with torch.no_grad():
        ref = model(x)
    model, notes = run_gptq(model, [x for x, _ in digits.val], bits=4, group_size=8, scale_bits=8)
    assert notes["tensors_by_scale_bits"]["8"] > 0
    back, _ = mzip.from_bytes(mzip.to_bytes(model), model=factory())
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        assert torch.nn.functional.cosine_similarity(model(x), ref).mean() > 0.99


def test_role_rules_in_gptq_bits_find_the_first_and_last_layer(lenet300, digits):
    """``role:first`` / ``role:last`` need the forward pass's order: gptq used to select its
    layers without the example input, so a bits map naming a role failed to run."""
    recipe = Recipe.from_dict(
        {
            "name": "edges",
            "stages": [{"method": "gptq", "bits": {"default": 4, "role:first": 8, "role:last": 8}}],
        }
    )
    cfg = recipe.stages[0]
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    get_method("gptq").apply(copy.deepcopy(lenet300), cfg, ctx)
    bits = {name: note["bits"] for name, note in ctx.notes["layers"].items()}
    assert bits == {"fc1": 8, "fc2": 4, "fc3": 8}
