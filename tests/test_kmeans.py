"""k-means / optimal / quantile codebooks: exact index reproduction and MSE ordering."""

import pytest
import torch

from modelzip.ops import kmeans


def _mse(x: torch.Tensor, cb: torch.Tensor, idx: torch.Tensor) -> float:
    return float(((x - cb[idx]) ** 2).mean())


@pytest.mark.parametrize("algorithm", ["kmeans", "optimal", "quantile"])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_indices_reproduce_codebook_values(algorithm: str, init: str) -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 0.05
    cb, idx = kmeans.fit_codebook(x, 16, algorithm=algorithm, init=init)
    assert cb.dtype == torch.float32 and cb.numel() <= 16
    assert bool((cb[1:] > cb[:-1]).all())  # sorted, no duplicates
    assert int(idx.min()) >= 0 and int(idx.max()) < cb.numel()
    # every entry is used and the shared value of each input is exactly codebook[index]
    assert torch.bincount(idx, minlength=cb.numel()).min() > 0
    if algorithm != "quantile":  # nearest-centroid assignment
        d = (x[:, None] - cb[None, :]).abs()
        assert torch.equal(cb[idx], cb[d.argmin(1)]) or torch.allclose(
            d.gather(1, idx[:, None]).squeeze(1), d.min(1).values
        )


def test_optimal_is_no_worse_than_lloyd() -> None:
    x = torch.cat([torch.randn(3000) * 0.02, torch.randn(300) * 0.2 + 0.5])
    best = kmeans.fit_codebook(x, 8, algorithm="optimal")
    for init in ("linear", "density", "random"):
        other = kmeans.fit_codebook(x, 8, algorithm="kmeans", init=init)
        assert _mse(x, *best) <= _mse(x, *other) * (1 + 1e-6)


def test_quantile_bins_hold_equal_mass() -> None:
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3))
    _, idx = kmeans.fit_codebook(x, 8, algorithm="quantile")
    counts = torch.bincount(idx)
    assert counts.max() - counts.min() <= 1


def test_few_distinct_values_are_kept_exactly() -> None:
    x = torch.tensor([0.5, -1.25, 0.5, 3.0])
    cb, idx = kmeans.fit_codebook(x, 16)
    assert torch.equal(cb[idx], x)
