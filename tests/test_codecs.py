"""Codecs: bit-exact round trips (property-based) and entropy-bound efficiency."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec import entropy
from modelzip.codec.codecs import candidates, encode_smallest, get_codec
from modelzip.errors import FormatError
from modelzip.ops.kmeans import empirical_entropy_bits

INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


@st.composite
def int_tensors(draw):
    shape = draw(st.lists(st.integers(0, 40), min_size=1, max_size=3))
    n = int(np.prod(shape))
    bits = draw(st.integers(1, 8))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    dtype = draw(st.sampled_from(INT_DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lo = -(2 ** (bits - 1)) if dtype != torch.uint8 and bits < 8 else 0
    v = rng.integers(lo, lo + 2**bits, size=n)
    v[rng.random(n) < sparsity] = 0
    return torch.from_numpy(v).to(dtype).reshape(shape)


@st.composite
def float_tensors(draw):
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n).astype(np.float32)
    v[rng.random(n) < draw(st.sampled_from([0.0, 0.7, 0.95]))] = 0.0
    if n and draw(st.booleans()):
        v[0] = -0.0  # must survive sparse storage bit-exactly
    if n > 1 and draw(st.booleans()):
        v[1] = np.nan
    t = torch.from_numpy(v)
    if draw(st.booleans()):
        t = t.to(torch.float16).to(torch.float32)  # exactly representable: f16 applies
    return t


def _roundtrip(t: torch.Tensor, name: str) -> None:
    codec = get_codec(name)
    if not codec.applies_to(t):
        return
    data = codec.encode(t)
    back = codec.decode_shaped(memoryview(data), t.dtype, list(t.shape)).reshape(t.shape)
    assert back.dtype == t.dtype
    if t.is_floating_point():
        assert torch.equal(back.view(torch.int32), t.view(torch.int32)), name
    else:
        assert torch.equal(back, t), name


@settings(max_examples=60, deadline=None)
@given(int_tensors())
def test_int_codecs_roundtrip_bit_exact(t: torch.Tensor) -> None:
    for name in candidates("auto"):
        _roundtrip(t, name)


@settings(max_examples=40, deadline=None)
@given(float_tensors())
def test_float_codecs_roundtrip_bit_exact(t: torch.Tensor) -> None:
    for name in candidates("auto"):
        _roundtrip(t, name)


def test_half_codecs_never_lose_information() -> None:
    t = torch.tensor([0.1, 0.5], dtype=torch.float32)  # 0.1 is not a float16 value
    assert not get_codec("f16").applies_to(t)
    assert get_codec("f16").applies_to(torch.tensor([0.5, -2.0, 0.0]))
    assert encode_smallest(t)[0] == "raw"


def test_ans_reaches_the_empirical_entropy() -> None:
    rng = np.random.default_rng(0)
    for n in (200, 3000, 50_000):
        gaps = np.minimum(rng.geometric(0.08, n) - 1, 255)
        codes = rng.choice(16, n, p=np.r_[np.arange(1, 9), np.arange(8, 0, -1)] / 72)
        for s in (gaps, codes):
            data = entropy.ans_encode(s)
            assert np.array_equal(entropy.ans_decode(data, n), s)
            assert len(data) <= 1.02 * empirical_entropy_bits(s) / 8 + 64
            assert len(entropy.huffman_encode(s)) >= empirical_entropy_bits(s) / 8


def test_huffman_lengths_are_limited_and_prefix_free() -> None:
    counts = np.array([2**i for i in range(30)])  # Fibonacci-like skew: deep tree
    lengths = entropy.huffman_lengths(counts)
    assert lengths.max() <= entropy.MAX_HUFFMAN_LEN
    assert np.sum(2.0**-lengths) <= 1.0


def test_sparse_ans_beats_packing_on_pruned_codes() -> None:
    rng = np.random.default_rng(1)
    v = rng.integers(1, 17, size=(300, 784))
    v[rng.random(v.shape) < 0.92] = 0
    t = torch.from_numpy(v).to(torch.uint8)
    name, data = encode_smallest(t, "ans")
    assert "ans" in name
    assert len(data) < len(get_codec("sparse-packed").encode(t))
    assert len(data) <= 1.02 * empirical_entropy_bits(v) / 8 + 64


def test_decoders_reject_short_payloads() -> None:
    t = torch.arange(100, dtype=torch.uint8)
    for name in ("raw", "packed", "ans", "huffman", "zstd"):
        data = get_codec(name).encode(t)
        with pytest.raises(FormatError):
            get_codec(name).decode_shaped(memoryview(data[: len(data) // 2]), torch.uint8, [100])


@pytest.mark.parametrize(
    "values",
    [
        np.array([-(2**63), 2**63 - 1, 0, 5]),  # 64-bit lanes, full int64 range
        np.arange(-40000, 40000, 7),  # 32-bit lanes
        np.arange(0, 60000, 3),  # 16-bit lanes
        np.array([1, 0, 1, 1, 0]),  # 1-bit lanes
        np.array([3, 0, 2, 1, 3, 3, 0]),  # 2-bit lanes, odd count
    ],
)
def test_zstd_lanes_round_trip_every_width(values: np.ndarray) -> None:
    t = torch.from_numpy(values).to(torch.int64)
    for name in ("zstd", "sparse-zstd"):
        _roundtrip(t, name)


def test_zstd_frames_are_checked_before_decompressing() -> None:
    from modelzip.codec import zstd

    codec = get_codec("zstd")
    good = codec.encode(torch.arange(200, dtype=torch.uint8) % 16)
    head = good[:2]
    assert head == b"\x00\x04"  # varint zigzag(min 0), 4-bit lanes
    bomb = head + zstd.compress(bytes(50_000_000))  # a tiny frame that declares 50 MB
    with pytest.raises(FormatError, match="declares 50000000 bytes, expected 100"):
        codec.decode_shaped(memoryview(bomb), torch.uint8, [200])
    with pytest.raises(FormatError, match="unused data"):
        codec.decode_shaped(memoryview(good + b"junk"), torch.uint8, [200])
    with pytest.raises(FormatError):
        codec.decode_shaped(memoryview(good[:-3]), torch.uint8, [200])
    with pytest.raises(FormatError, match="bad lane width"):
        codec.decode_shaped(memoryview(b"\x00\x03" + good[2:]), torch.uint8, [200])


def test_zstd_is_fast_and_near_entropy_on_weight_codes() -> None:
    """On skewed 4-bit codes the memory-speed codec stays within 2% of ANS."""
    rng = np.random.default_rng(3)
    p = np.exp(-0.5 * ((np.arange(16) - 7.5) / 3) ** 2)
    v = torch.from_numpy(rng.choice(16, 200_000, p=p / p.sum()).astype(np.uint8))
    z = len(get_codec("zstd").encode(v))
    a = len(get_codec("ans").encode(v))
    assert z <= 1.02 * a
    assert z <= 1.02 * empirical_entropy_bits(v.numpy()) / 8 + 64
    assert get_codec("zstd").decode_ns(v) == 0.0 < get_codec("ans").decode_ns(v)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6])
def test_zstd_gathers_table_values_while_decoding(bits: int) -> None:
    """2- and 4-bit codes turn into table values straight from the stored bytes; the result is
    bit-identical to decoding the codes and indexing; codes past the table are refused."""
    rng = np.random.default_rng(bits)
    idx = torch.from_numpy(rng.integers(1, 2**bits, size=(37, 29)).astype(np.uint8))
    table = torch.randn(2**bits)
    codec = get_codec("zstd")
    data = memoryview(codec.encode(idx))
    got = codec.decode_gather(data, torch.uint8, [37, 29], table)
    if bits not in (2, 4):  # 3 and 6 bits are stored in 4- and 8-bit lanes
        assert got is None if bits != 3 else got is not None
    if got is not None:
        assert torch.equal(got.view(torch.int32), table[idx.long()].reshape(-1).view(torch.int32))
        with pytest.raises(FormatError, match="index out of range"):
            codec.decode_gather(data, torch.uint8, [37, 29], table[: int(idx.max())])


def test_codebook_models_load_through_the_gather_path() -> None:
    from modelzip import mzip
    from modelzip.codec import format as fmt
    from modelzip.nn.codebook import Codebook
    from modelzip.nn.constraints import constrain

    model = mz_model()
    w = model.fc1.weight
    rng = np.random.default_rng(0)
    p = np.exp(-0.5 * ((np.arange(16) - 7.5) / 3) ** 2)  # bell-shaped, like real k-means codes
    idx = torch.from_numpy(rng.choice(16, w.shape, p=p / p.sum()).astype(np.uint8))
    constrain(model.fc1, "weight", Codebook(idx, torch.randn(16)))
    blob = mzip.to_bytes(model)
    header, _ = fmt.read_header(blob)
    assert header["tensors"]["fc1.weight"]["fields"]["indices"]["codec"] == "zstd"
    back, _ = mzip.from_bytes(blob)
    assert torch.equal(back.fc1.weight, model.fc1.weight)


def mz_model():
    import modelzip as mz

    return mz.load_model("zoo:lenet300", data=mz.load_data("digits"))


INT64 = torch.iinfo(torch.int64)


@pytest.mark.parametrize("sparse", [False, True])
def test_full_int64_range_round_trips_with_every_codec(sparse: bool) -> None:
    """Differences from the minimum can exceed int64: every codec stays exact (or declines)."""
    if sparse:
        t = torch.zeros(2000, dtype=torch.int64)
        t[[5, 1999]] = torch.tensor([INT64.min, INT64.max])
    else:
        t = torch.tensor([INT64.min, 0, INT64.max, -1])
    for name in candidates("auto"):
        _roundtrip(t, name)
    for coder in ("auto", "zstd", "packed", "ans", "huffman"):
        name, data = encode_smallest(t, coder)
        back = get_codec(name).decode_shaped(memoryview(data), t.dtype, list(t.shape))
        assert torch.equal(back, t), (coder, name)


def test_zstd_frames_with_oversized_windows_are_refused() -> None:
    import struct

    size = 1000
    header = bytes([0b10000000, (28 - 10) << 3]) + struct.pack("<I", size)  # 256 MiB window
    block = (1 | (size << 3)).to_bytes(3, "little") + bytes([7])  # one RLE block
    payload = b"\x00\x08" + header + block
    with pytest.raises(FormatError, match="window"):
        get_codec("zstd").decode_shaped(memoryview(payload), torch.uint8, [size])


def test_gather_agrees_with_the_plain_path_on_padding_and_empty_tensors() -> None:
    from modelzip.codec import zstd
    from modelzip.codec.bits import varint
    from modelzip.nn.codebook import Codebook

    codec = get_codec("zstd")
    table = torch.tensor([0.5, -1.0, 2.0, 4.0])
    padded = memoryview(varint(0) + bytes([4]) + zstd.compress(bytes([0x21, 0xF3])))  # + pad 15
    plain = Codebook.decode(
        {"indices": codec.decode_shaped(padded, torch.uint8, [3]), "codebook": table}, {}
    )
    assert torch.equal(codec.decode_gather(padded, torch.uint8, [3], table), plain)
    empty = memoryview(varint(40) + bytes([2]) + zstd.compress(b""))
    assert codec.decode_gather(empty, torch.uint8, [0], table) is None  # plain path decides


def test_sparse_fillers_may_not_run_past_the_end() -> None:
    from modelzip.codec.sparse import positions_of

    assert positions_of(np.array([3, 0]), 255, 5).tolist() == [3, 4]
    with pytest.raises(FormatError, match="past the"):
        positions_of(np.array([255] * 5), 255, 1000)
