"""The .mzip v2 container: exact round trips and hostile files (clear FormatError, bounded)."""

import contextlib
import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelzip as mz
from modelzip import mzip
from modelzip.codec import format as fmt
from modelzip.codec import pack
from modelzip.codec.bits import Reader, varint
from modelzip.codec.inspect import inspect_bytes
from modelzip.context import Context
from modelzip.errors import FormatError
from modelzip.eval.size import effective_weights
from modelzip.nn.constraints import AffineQuant, Mask, constrain
from modelzip.pipeline import run
from modelzip.recipe import Recipe
from modelzip.train import Trainer


def _compressed(lenet300):
    constrain(lenet300.fc1, "weight", Mask(lenet300.fc1.weight.abs() > 0.05))
    constrain(lenet300.fc1, "weight", AffineQuant(8, axis=0))
    constrain(lenet300.fc2, "weight", AffineQuant(4, symmetric=False, axis=None))
    return lenet300


def test_round_trip_is_bit_exact(lenet300, digits, tmp_path):
    model = _compressed(lenet300)
    path = tmp_path / "m.mzip"
    size = mzip.save(model, path)
    assert size == path.stat().st_size
    loaded, header = mzip.load(path)
    with torch.no_grad():
        for name in ("fc1.weight", "fc2.weight", "fc3.weight", "fc1.bias"):
            mod, attr = name.split(".")
            a = getattr(getattr(model, mod), attr)
            b = getattr(getattr(loaded, mod), attr)
            assert torch.equal(a, b), name
        x = digits.example(16)
        assert torch.equal(model(x), loaded(x))
    assert header["tensors"]["fc1.weight"]["kind"] == "affine"
    assert header["source"]["ref"] == "lenet300"


def test_stored_codes_are_integers_on_the_grid(lenet300):
    model = _compressed(lenet300)
    blob = mzip.to_bytes(model)
    header, parts = fmt.read_header(blob)
    fields = pack.decode_fields(header, parts, 1 << 24)
    q = fields["fc1.weight"]["qdata"]
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert (q[~(lenet300.fc1.parametrizations.weight[0].mask)] == 0).all()
    assert fields["fc1.weight"]["scale"].shape == (300, 1)  # per output channel
    assert fields["fc2.weight"]["qdata"].dtype == torch.uint8  # asymmetric 4-bit codes
    # sub-byte codes are bit-packed or entropy coded, never one byte each
    assert len(parts["fc2.weight/qdata"]) < fields["fc2.weight"]["qdata"].numel() * 0.6


def test_truncated_and_corrupted_files_fail_clearly(lenet300, tmp_path):
    data = mzip.to_bytes(_compressed(lenet300))
    for bad in (data[:7], data[:100], data[: len(data) // 2], b"", b"\x00" * 64):
        with pytest.raises(FormatError):
            mzip.from_bytes(bad)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # inside the last payload
    with pytest.raises(FormatError, match="checksum"):
        mzip.from_bytes(bytes(flipped))


def test_wrong_version_and_foreign_safetensors(lenet300):
    from safetensors.torch import save

    foreign = save({"w": torch.zeros(3)}, metadata={"x": "y"})
    with pytest.raises(FormatError, match="not a .mzip"):
        mzip.from_bytes(foreign)
    data = mzip.to_bytes(lenet300)
    newer = data[:4] + bytes([9]) + data[5:]
    with pytest.raises(FormatError, match="version 9"):
        mzip.from_bytes(newer)


def test_write_is_atomic_when_interrupted(lenet300, tmp_path, monkeypatch):
    path = tmp_path / "m.mzip"
    mzip.save(lenet300, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        mzip.save(_compressed(lenet300), path)
    assert path.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.mzip"]  # no temp left behind


def test_masks_hold_through_finetuning(lenet300, digits):
    mask = lenet300.fc2.weight.abs() > lenet300.fc2.weight.abs().median()
    constrain(lenet300.fc2, "weight", Mask(mask))
    Trainer(progress=False).fit(lenet300, digits.train, epochs=1, lr=1e-2)
    w = lenet300.fc2.weight.detach()
    assert (w[~mask] == 0).all() and (w[mask] != 0).float().mean() > 0.99
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    assert ctx.generator(1).initial_seed() != ctx.generator(2).initial_seed()


@pytest.fixture(scope="module")
def packed():
    data = mz.load_data("digits")
    torch.manual_seed(0)
    model = mz.load_model("zoo:lenet300", data=data)
    recipe = Recipe.from_dict(
        {
            "stages": [
                {"method": "prune", "sparsity": {"default": 0.9, "fc3": 0.5}, "scope": "layer"},
                {"method": "cluster", "bits": {"default": 4, "fc3": 6}},
                {"method": "encode", "coder": "ans"},
            ]
        }
    )
    model, _ = run(model, recipe, Context(data=data, trainer=Trainer(progress=False)))
    return model, mzip.to_bytes(model, info={"note": "test"})


def _split(blob: bytes):
    """(json header, [(payload bytes)]) of a valid file."""
    _, _, _, head_len, _ = fmt.FIXED.unpack_from(blob)
    r = Reader(blob[fmt.FIXED.size :])
    head = bytes(r.take(head_len))
    count = r.varint()
    lengths = []
    for _ in range(count):
        lengths.append(r.varint())
        r.take(4)
    d = zlib.decompressobj(-15, zdict=fmt.ZDICT)
    obj = json.loads(d.decompress(head))
    payloads = [bytes(r.take(n)) for n in lengths]
    return obj, payloads


def _join(obj, payloads, version=fmt.VERSION) -> bytes:
    """A file with valid checksums around (possibly hostile) content."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=fmt.ZDICT)
    head = c.compress(json.dumps(obj, separators=(",", ":")).encode()) + c.flush()
    table = varint(len(payloads)) + b"".join(
        varint(len(p)) + struct.pack("<I", fmt.crc32(p)) for p in payloads
    )
    fixed = fmt.FIXED.pack(fmt.MAGIC, version, 0, len(head), fmt.crc32(head + table))
    return fixed + head + table + b"".join(payloads)


def test_roundtrip_is_bit_exact(packed) -> None:
    model, blob = packed
    back, header = mzip.from_bytes(blob)
    want, got = effective_weights(model), effective_weights(back)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k].view(torch.int32), got[k].view(torch.int32)), k
    assert header["info"] == {"note": "test"}
    obj, payloads = _split(blob)
    assert _join(obj, payloads) == blob  # the helper reproduces the writer exactly


def test_metadata_is_small_and_inspect_reports_entropy(packed) -> None:
    _, blob = packed
    info = inspect_bytes(blob)
    assert info["metadata_bytes"] < 400
    fc1 = next(t for t in info["tensors"] if t["name"] == "fc1.weight")
    assert fc1["shape"] == [300, 64] and 0.85 < fc1["sparsity"] < 0.95
    assert fc1["bytes"] - fc1["side_bytes"] <= 1.02 * fc1["entropy_bytes"] + 64


def test_truncated_file(packed) -> None:
    _, blob = packed
    for cut in (0, 3, 13, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(FormatError):
            mzip.from_bytes(blob[:cut])


def test_flipped_bytes_are_detected(packed) -> None:
    _, blob = packed
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(FormatError):
            mzip.from_bytes(bytes(bad))


def test_wrong_version_and_magic(packed) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    with pytest.raises(FormatError, match="version 3"):
        mzip.from_bytes(_join(obj, payloads, version=3))
    with pytest.raises(FormatError, match="magic"):
        mzip.from_bytes(b"PK\x03\x04" + blob[4:])


@pytest.mark.parametrize("shape", [[10**12], [2**30, 2**30], [-1, 3], [1] * 20, "big", [2**20, 64]])
def test_absurd_shapes_are_refused_without_allocating(packed, shape) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    rec = next(r for r in obj["t"] if r[0] == "fc1.weight")
    rec[3][0][3] = shape
    with pytest.raises(FormatError):
        mzip.from_bytes(_join(obj, payloads))


def test_absurd_lengths_and_architecture(packed) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    # a payload table that claims more bytes than the file has
    bad = bytearray(_join(obj, payloads))
    with pytest.raises(FormatError):
        mzip.from_bytes(bytes(bad[:-5]))
    obj2, _ = _split(blob)
    obj2["arch"]["fc1"] = {
        "type": "Linear",
        "args": {"in_features": 10**9, "out_features": 300, "bias": True},
    }
    with pytest.raises(FormatError, match="too large"):
        mzip.from_bytes(_join(obj2, payloads))
    obj4, _ = _split(blob)
    obj4["source"]["kwargs"]["in_shape"] = [10**6, 10**6]
    with pytest.raises(FormatError, match="too large"):
        mzip.from_bytes(_join(obj4, payloads))
    obj4["source"] = {"kind": "zoo", "ref": "no-such-model", "kwargs": {}}
    with pytest.raises(FormatError, match="cannot build"):
        mzip.from_bytes(_join(obj4, payloads))
    obj3, _ = _split(blob)
    obj3["t"][0][3][0][1] = "zip-bomb"
    with pytest.raises(FormatError, match="unknown codec"):
        mzip.from_bytes(_join(obj3, payloads))


def test_codebook_index_out_of_range(packed) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    names = [f"{r[0]}/{f[0]}" for r in obj["t"] for f in r[3]]
    i = names.index("fc3.weight/codebook")
    rec = next(r for r in obj["t"] if r[0] == "fc3.weight")
    # drop all but two centroids: stored indices now point past the table
    from modelzip.codec.codecs import get_codec

    payloads[i] = get_codec("raw").encode(torch.tensor([0.5, -0.5]))
    rec[3][1][1:] = ["raw", "f32", [2]]
    with pytest.raises(FormatError, match="index out of range"):
        mzip.from_bytes(_join(obj, payloads))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_fuzz_decoder_never_crashes(packed, data) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    mode = data.draw(st.sampled_from(["bytes", "payload", "json"]))
    if mode == "bytes":  # random damage (checksums catch most of it)
        bad = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 8))):
            bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
        candidate = bytes(bad[: data.draw(st.integers(0, len(bad)))])
    elif mode == "payload":  # damage behind valid checksums: the codecs must cope
        i = data.draw(st.integers(0, len(payloads) - 1))
        p = bytearray(payloads[i])
        if p:
            for _ in range(data.draw(st.integers(1, 4))):
                p[data.draw(st.integers(0, len(p) - 1))] = data.draw(st.integers(0, 255))
        payloads[i] = bytes(p[: data.draw(st.integers(0, len(p)))]) if p else b"\x00"
        candidate = _join(obj, payloads)
    else:  # hostile but well-formed JSON values
        rec = obj["t"][data.draw(st.integers(0, len(obj["t"]) - 1))]
        rec[data.draw(st.integers(1, 3))] = data.draw(
            st.one_of(
                st.integers(), st.text(max_size=5), st.lists(st.integers(-5, 10**10), max_size=4)
            )
        )
        candidate = _join(obj, payloads)
    with contextlib.suppress(FormatError):
        mzip.from_bytes(candidate)


def test_cli_inspect_json(packed, tmp_path) -> None:
    from typer.testing import CliRunner

    from modelzip.cli import app

    _, blob = packed
    path = tmp_path / "m.mzip"
    fmt.write_atomic(path, blob)
    res = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["bytes"] == len(blob) and info["metadata_fraction"] < 0.1
    assert {t["name"] for t in info["tensors"]} >= {"fc1.weight", "fc3.bias"}
    bad = tmp_path / "bad.mzip"
    bad.write_bytes(blob[:100])
    from modelzip.cli import main

    assert main(["inspect", str(bad)]) == 2


def test_pruned_weights_are_positive_zeros_and_coded_sparse(lenet300):
    from modelzip.codec.inspect import inspect_bytes
    from modelzip.nn.constraints import Mask, constrain

    w = lenet300.fc1.weight.detach()
    constrain(lenet300.fc1, "weight", Mask(w.abs() > w.abs().quantile(0.9)))
    pruned = lenet300.fc1.weight.detach()
    assert not torch.signbit(pruned[pruned == 0]).any()  # no -0.0 from negative weights
    info = inspect_bytes(mzip.to_bytes(lenet300))
    fc1 = next(t for t in info["tensors"] if t["name"] == "fc1.weight")
    # 10% of 19,200 fp32 values + an index: far below the 76,800 raw bytes
    assert fc1["bytes"] < 0.15 * w.numel() * 4


TIED_FACTORY = """
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self, n=10):
        super().__init__()
        self.emb = nn.Embedding(n, 4)
        self.head = nn.Linear(4, n, bias=False)
        self.head.weight = self.emb.weight  # tied, as in language models
        self.register_buffer("steps", torch.arange(3) * 7, persistent=False)

    def forward(self, x):
        return self.head(self.emb(x)) + self.steps.sum()


def make(n=10):
    return Tied(n)
"""


def test_loading_skips_init_keeps_ties_and_derived_buffers(tmp_path) -> None:
    """The loader assigns the decoded tensors into the caller's architecture: the result has
    real values everywhere, tied weights stay one object, and buffers that no state_dict
    holds keep what the constructor computed."""
    (tmp_path / "tied.py").write_text(TIED_FACTORY)
    spec = f"{tmp_path / 'tied.py'}:make"
    model = mz.load_model(spec)
    with torch.no_grad():
        model.emb.weight.copy_(torch.arange(40, dtype=torch.float32).reshape(10, 4) / 8)
    back, _ = mzip.from_bytes(mzip.to_bytes(model), model=lambda: mz.load_model(spec))
    assert not any(p.is_meta for p in back.parameters())
    assert back.head.weight is back.emb.weight
    assert torch.equal(back.emb.weight, model.emb.weight)
    assert torch.equal(back.steps, torch.tensor([0, 7, 14]))
    x = torch.tensor([1, 2, 3])
    assert torch.equal(back(x), model(x))


def test_threaded_decode_is_identical_and_reports_errors(packed) -> None:
    """With more than one torch thread, tensors decode on a thread pool: same result, and a
    hostile payload still surfaces as one FormatError naming the field."""
    model, blob = packed
    obj, payloads = _split(blob)
    i = [f"{r[0]}/{f[0]}" for r in obj["t"] for f in r[3]].index("fc3.weight/codebook")
    payloads[i] = b"\x01"  # valid checksum, wrong content
    bad = _join(obj, payloads)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        back, _ = mzip.from_bytes(blob)
        with pytest.raises(FormatError, match="fc3.weight/codebook"):
            mzip.from_bytes(bad)
    finally:
        torch.set_num_threads(before)
    want, got = effective_weights(model), effective_weights(back)
    for k in want:
        assert torch.equal(want[k].view(torch.int32), got[k].view(torch.int32)), k


NEEDS_VALUES_FACTORY = """
import torch
from torch import nn


class Derived(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        # constructors that read parameter values cannot run on the meta device
        self.register_buffer("wmax", self.lin.weight.detach().abs().max().clone(), persistent=False)
        self.limit = float(self.lin.bias.detach().abs().max())

    def forward(self, x):
        return self.lin(x) + self.wmax * 0


def make():
    return Derived()
"""


@pytest.mark.parametrize("how", ["item", "buffer", "attribute"])
def test_models_whose_constructor_reads_parameters_still_load(tmp_path, how) -> None:
    """A constructor that reads parameter values fails on meta (``float``) or leaves a meta
    buffer or tensor attribute behind: the loader then builds with real initialisation."""
    text = NEEDS_VALUES_FACTORY
    if how != "item":
        text = text.replace("        self.limit = float(self.lin.bias.detach().abs().max())\n", "")
    if how == "attribute":
        text = text.replace(
            '        self.register_buffer("wmax", self.lin.weight.detach().abs().max().clone(), '
            "persistent=False)\n",
            "        self.wmax = self.lin.weight.detach().abs().max().clone()\n",
        )
        assert "self.wmax = " in text
    (tmp_path / "derived.py").write_text(text)
    spec = f"{tmp_path / 'derived.py'}:make"
    model = mz.load_model(spec)
    back, _ = mzip.from_bytes(mzip.to_bytes(model), model=mz.load_model(spec))
    assert not any(t.is_meta for t in [*back.parameters(), *back.buffers()])
    assert torch.equal(back.lin.weight, model.lin.weight)
    assert back(torch.ones(2, 4)).shape == (2, 3)


def test_meta_builds_stay_in_their_thread_and_nest() -> None:
    """Building on meta patches parameter registration for the building thread only, and
    overlapping builds restore the original however they interleave."""
    import threading

    from torch import nn

    from modelzip.source import parameters_on_meta

    a, b = parameters_on_meta(), parameters_on_meta()
    a.__enter__()
    b.__enter__()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(nn.Linear(2, 2).weight.device.type))
    worker.start()
    worker.join()
    assert nn.Linear(2, 2).weight.is_meta and seen == ["cpu"]
    a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    assert nn.Linear(2, 2).weight.device.type == "cpu"


SHARED_FACTORY = """
import torch
from torch import nn


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        w = nn.Parameter(torch.randn(3, 3))
        self.a.weight = w  # one Parameter object registered twice
        self.b.weight = w
        table = torch.arange(3.0)
        self.a.register_buffer("table", table)  # one buffer shared by two modules
        self.b.register_buffer("table", table)

    def forward(self, x):
        return self.b(self.a(x)) + self.a.table


def make():
    return Shared()
"""


def test_shared_parameters_and_buffers_stay_shared(tmp_path) -> None:
    (tmp_path / "shared.py").write_text(SHARED_FACTORY)
    spec = f"{tmp_path / 'shared.py'}:make"
    model = mz.load_model(spec)
    back, _ = mzip.from_bytes(mzip.to_bytes(model), model=lambda: mz.load_model(spec))
    assert back.a.weight is back.b.weight and back.a.table is back.b.table
    assert len(list(back.parameters())) == len(list(model.parameters()))
    x = torch.ones(2, 3)
    assert torch.equal(back(x), model(x))


def test_stored_dtypes_are_cast_to_the_architecture(lenet300) -> None:
    """A file that declares another dtype than the layer's loads as the layer's dtype (as
    copying into the built model would), so kernels never see a foreign dtype."""
    obj, payloads = _split(mzip.to_bytes(lenet300))
    names = [f"{r[0]}/{f[0]}" for r in obj["t"] for f in r[3]]
    i = names.index("fc3.bias/values")
    rec = next(r for r in obj["t"] if r[0] == "fc3.bias")
    from modelzip.codec.codecs import get_codec

    payloads[i] = get_codec("raw").encode(lenet300.fc3.bias.detach().double())
    rec[3][0][1:3] = ["raw", "f64"]
    back, _ = mzip.from_bytes(_join(obj, payloads))
    assert back.fc3.bias.dtype == torch.float32
    assert torch.equal(back.fc3.bias, lenet300.fc3.bias)
