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
from modelzip.codec import container
from modelzip.codec.bits import Reader, varint
from modelzip.codec.inspect import inspect_bytes
from modelzip.context import Context
from modelzip.errors import FormatError
from modelzip.eval.size import effective_weights
from modelzip.pipeline import run
from modelzip.recipe import Recipe
from modelzip.train import Trainer


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
    return model, container.to_bytes(model, info={"note": "test"})


def _split(blob: bytes):
    """(json header, [(payload bytes)]) of a valid file."""
    _, _, _, head_len, _ = container.FIXED.unpack_from(blob)
    r = Reader(blob[container.FIXED.size :])
    head = bytes(r.take(head_len))
    count = r.varint()
    lengths = []
    for _ in range(count):
        lengths.append(r.varint())
        r.take(4)
    d = zlib.decompressobj(-15, zdict=container.ZDICT)
    obj = json.loads(d.decompress(head))
    payloads = [bytes(r.take(n)) for n in lengths]
    return obj, payloads


def _join(obj, payloads, version=container.VERSION) -> bytes:
    """A file with valid checksums around (possibly hostile) content."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=container.ZDICT)
    head = c.compress(json.dumps(obj, separators=(",", ":")).encode()) + c.flush()
    table = varint(len(payloads)) + b"".join(
        varint(len(p)) + struct.pack("<I", container.crc32(p)) for p in payloads
    )
    fixed = container.FIXED.pack(
        container.MAGIC, version, 0, len(head), container.crc32(head + table)
    )
    return fixed + head + table + b"".join(payloads)


def test_roundtrip_is_bit_exact(packed) -> None:
    model, blob = packed
    back, header = container.from_bytes(blob)
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
            container.from_bytes(blob[:cut])


def test_flipped_bytes_are_detected(packed) -> None:
    _, blob = packed
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(FormatError):
            container.from_bytes(bytes(bad))


def test_wrong_version_and_magic(packed) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    with pytest.raises(FormatError, match="version 3"):
        container.from_bytes(_join(obj, payloads, version=3))
    with pytest.raises(FormatError, match="magic"):
        container.from_bytes(b"PK\x03\x04" + blob[4:])


@pytest.mark.parametrize("shape", [[10**12], [2**30, 2**30], [-1, 3], [1] * 20, "big", [2**20, 64]])
def test_absurd_shapes_are_refused_without_allocating(packed, shape) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    rec = next(r for r in obj["t"] if r[0] == "fc1.weight")
    rec[3][0][3] = shape
    with pytest.raises(FormatError):
        container.from_bytes(_join(obj, payloads))


def test_absurd_lengths_and_architecture(packed) -> None:
    _, blob = packed
    obj, payloads = _split(blob)
    # a payload table that claims more bytes than the file has
    bad = bytearray(_join(obj, payloads))
    with pytest.raises(FormatError):
        container.from_bytes(bytes(bad[:-5]))
    obj2, _ = _split(blob)
    obj2["arch"]["fc1"]["args"]["in_features"] = 10**9
    with pytest.raises(FormatError, match="too large"):
        container.from_bytes(_join(obj2, payloads))
    obj4, _ = _split(blob)
    obj4["source"]["kwargs"]["in_shape"] = [10**6, 10**6]
    with pytest.raises(FormatError, match="too large"):
        container.from_bytes(_join(obj4, payloads))
    obj4["source"] = {"kind": "zoo", "ref": "no-such-model", "kwargs": {}}
    with pytest.raises(FormatError, match="cannot build"):
        container.from_bytes(_join(obj4, payloads))
    obj3, _ = _split(blob)
    obj3["t"][0][3][0][1] = "zip-bomb"
    with pytest.raises(FormatError, match="unknown codec"):
        container.from_bytes(_join(obj3, payloads))


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
        container.from_bytes(_join(obj, payloads))


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
        container.from_bytes(candidate)


def test_cli_inspect_json(packed, tmp_path) -> None:
    from typer.testing import CliRunner

    from modelzip.cli import app

    _, blob = packed
    path = tmp_path / "m.mzip"
    container.write_atomic(path, blob)
    res = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["bytes"] == len(blob) and info["metadata_fraction"] < 0.1
    assert {t["name"] for t in info["tensors"]} >= {"fc1.weight", "fc3.bias"}
    bad = tmp_path / "bad.mzip"
    bad.write_bytes(blob[:100])
    from modelzip.cli import main

    assert main(["inspect", str(bad)]) == 2
