"""Pure quantization math: error bounds, shapes, exact zero, LSQ gradients, observers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modelzip.nn.constraints import AffineQuant, Encoded, decode
from modelzip.nn.registry import CONSTRAINT_KINDS
from modelzip.ops import affine, observers

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=finite),
    bits=st.sampled_from(affine.VALID_BITS),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
)
def test_round_trip_error_within_half_a_step(x, bits, symmetric, per_channel):
    t = torch.from_numpy(x)
    axis = 0 if per_channel else None
    scale, zp = affine.compute_qparams(t, bits, symmetric=symmetric, axis=axis)
    q = affine.quantize(t, scale, zp, bits, signed=symmetric)
    qmin, qmax = affine.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax
    err = (affine.dequantize(q, scale, zp) - t).abs()
    # min/max qparams put every value in range, so rounding is the only error
    assert bool((err <= scale / 2 * (1 + 1e-4) + 1e-6).all())


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float32, st.tuples(st.integers(2, 5), st.integers(4, 16)), elements=finite),
    bits=st.sampled_from((2, 3, 4, 8)),
)
def test_asymmetric_zero_point_makes_zero_exact(x, bits):
    t = torch.from_numpy(x)
    t[:, 0] = 0.0
    scale, zp = affine.compute_qparams(t, bits, symmetric=False, axis=0)
    assert bool((zp == torch.round(zp)).all())
    out = affine.fake_quantize(t, scale, zp, bits, signed=False)
    assert bool((out[:, 0] == 0).all())
    assert bool((affine.dequantize(zp, scale, zp) == 0).all())


def test_qparam_shapes_per_tensor_channel_and_group():
    lin, conv = torch.randn(30, 64), torch.randn(20, 3, 5, 5)
    assert affine.compute_qparams(lin, 8, axis=0)[0].shape == (30, 1)
    assert affine.compute_qparams(conv, 8, axis=0)[0].shape == (20, 1, 1, 1)
    assert affine.compute_qparams(conv, 8, axis=None)[0].shape == (1, 1, 1, 1)
    assert affine.compute_qparams(lin, 4, group_size=16)[0].shape == (30, 4, 1)
    q = AffineQuant(4, group_size=25)
    assert q.qparams(conv)[0].shape == (20, 3, 1)  # groups along each channel's 75 inputs


def test_unsigned_symmetric_uses_whole_range_for_nonnegative_data():
    x = torch.rand(100) * 3
    scale, zp = affine.compute_qparams(x, 8, symmetric=True, signed=False)
    assert float(zp) == 0 and float(scale) == pytest.approx(float(x.max()) / 255)


@pytest.mark.parametrize("bad", [0, 1, 9, 12, 32, True])
def test_check_bits_names_valid_widths(bad):
    with pytest.raises(ValueError, match="bits must be one of 2, 3, 4, 5, 6, 7, 8, 16"):
        affine.check_bits(bad)


@pytest.mark.parametrize(
    "kw",
    [
        {"bits": 8},
        {"bits": 4, "axis": None},
        {"bits": 3, "symmetric": False},
        {"bits": 16, "symmetric": False, "signed": True},
        {"bits": 4, "group_size": 25},
    ],
)
def test_affine_encode_decode_is_bit_exact(kw):
    torch.manual_seed(0)
    w = torch.randn(8, 3, 5, 5)
    c = AffineQuant(**kw)
    enc = c.encode(w)
    assert enc.fields["qdata"].dtype in (torch.int8, torch.uint8, torch.int16, torch.int32)
    again = decode(Encoded(enc.kind, enc.fields, enc.meta), CONSTRAINT_KINDS)
    assert torch.equal(again, c(w))


def test_fake_quant_passes_gradient_straight_through():
    x = torch.randn(4, 6, requires_grad=True)
    scale, zp = affine.compute_qparams(x, 4)
    affine.fake_quantize(x, scale, zp, 4, True).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_lsq_gradients_reach_values_and_step_size():
    x = torch.randn(32, 16, requires_grad=True)
    scale = torch.full((32, 1), 0.05, requires_grad=True)  # small: some values clip
    y = affine.lsq_fake_quantize(x, scale, torch.zeros(32, 1), 4, True)
    (y**2).sum().backward()
    assert scale.grad is not None and bool((scale.grad != 0).any())
    inside = (x / 0.05).abs() <= 7
    assert bool((x.grad[~inside] == 0).all()) and bool((x.grad[inside] != 0).any())


def _hist(x: torch.Tensor) -> observers.Histogram:
    h = observers.new_histogram(float(x.min()), float(x.max()))
    observers.add(h, x)
    return h


def test_percentile_and_kl_clip_rare_outliers_but_minmax_does_not():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(200_000))
    x[:5] = 40.0  # a few outliers stretch the range 10x
    h = _hist(x)
    assert h.zeros == pytest.approx(float((x == 0).sum()))
    assert observers.choose_range(h, "minmax") == (0.0, pytest.approx(40.0))
    for name in ("percentile", "kl"):
        lo, hi = observers.choose_range(h, name)
        assert lo == 0.0 and 2.0 < hi < 20.0, (name, hi)


def test_mse_range_beats_minmax_on_heavy_tails():
    torch.manual_seed(1)
    x = torch.distributions.StudentT(2.0).sample((100_000,))
    h = _hist(x)

    def err(rng):
        s, zp = affine.qparams_from_range(torch.tensor(rng[0]), torch.tensor(rng[1]), 8)
        return float((affine.fake_quantize(x, s, zp, 8, True) - x).pow(2).mean())

    mse_range = observers.choose_range(h, "mse", symmetric=True)
    assert err(mse_range) < err(observers.choose_range(h, "minmax"))


def test_unknown_observer_is_rejected():
    with pytest.raises(ValueError, match="observer must be one of minmax, percentile, mse, kl"):
        observers.choose_range(_hist(torch.rand(10)), "entropy")


def test_kl_does_not_collapse_on_discrete_data():
    # 8x8 digits: 17 grey levels. A range holding only the first level must not look perfect.
    torch.manual_seed(0)
    x = torch.randint(0, 17, (50_000,)).float() / 16
    for name in ("kl", "mse"):
        lo, hi = observers.choose_range(_hist(x), name)
        assert lo == 0.0 and hi > 0.8, (name, hi)
