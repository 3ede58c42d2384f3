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
    for name in ("raw", "packed", "ans", "huffman"):
        data = get_codec(name).encode(t)
        with pytest.raises(FormatError):
            get_codec(name).decode_shaped(memoryview(data[: len(data) // 2]), torch.uint8, [100])
