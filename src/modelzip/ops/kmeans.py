"""Scalar codebooks for weight sharing: 1-D k-means, exact optimal 1-D clustering, quantiles.

Pure functions on 1-D float tensors (no modules, no I/O). Every algorithm returns
``(codebook, indices)`` with ``codebook`` sorted ascending and ``codebook[indices]`` the shared
value of every input, so the indices reproduce the codebook values exactly.

Example:
    >>> cb, idx = fit_codebook(torch.randn(1000), 16, algorithm="kmeans", init="linear")
    >>> cb.shape, int(idx.max()) < 16
    (torch.Size([16]), True)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Init = Literal["linear", "density", "random"]
Algorithm = Literal["kmeans", "optimal", "quantile"]

#: k-means stops when no assignment changes or after this many Lloyd iterations.
MAX_ITER = 100
#: Exact 1-D clustering is O(k n) but slow for huge n: past this many values it runs on a
#: random subsample (the codebook is then optimal for the sample; all values are assigned).
OPTIMAL_MAX_SAMPLES = 200_000


def init_centroids(x: torch.Tensor, k: int, init: Init, gen: torch.Generator) -> torch.Tensor:
    """Starting centroids as in Deep Compression §3.1.

    ``linear`` spaces them evenly between min and max (keeps the rare large weights that
    matter most), ``density`` evenly on the CDF (quantiles), ``random`` (Forgy) picks inputs.
    """
    x = x.double()
    if init == "linear":
        return torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    if init == "density":
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(_cap(x, 1 << 24, gen), q)
    if init == "random":
        pick = torch.randperm(x.numel(), generator=gen)[:k]
        return x[pick].sort().values
    raise ValueError(f"unknown init {init!r}; valid: linear, density, random")


def assign(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of a sorted codebook (ties go to the lower one)."""
    cb = codebook.double()
    mids = (cb[1:] + cb[:-1]) / 2
    return torch.searchsorted(mids, x.double().contiguous(), right=False)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    init: Init = "linear",
    gen: torch.Generator | None = None,
    max_samples: int | None = None,
    max_iter: int = MAX_ITER,
) -> torch.Tensor:
    """Lloyd's 1-D k-means; returns the sorted codebook (float64).

    With ``max_samples`` the centroids are fitted on a random subsample (the fast path for
    large layers); assignment of all values is done by the caller with ``assign``.
    """
    gen = gen or torch.Generator().manual_seed(0)
    xs = x.double()
    if max_samples is not None:
        xs = _cap(xs, max_samples, gen)
    cb = init_centroids(xs, k, init, gen).sort().values
    prev = None
    for _ in range(max_iter):
        idx = assign(xs, cb)
        if prev is not None and torch.equal(idx, prev):
            break
        sums = torch.bincount(idx, weights=xs, minlength=k)
        counts = torch.bincount(idx, minlength=k)
        # An empty cluster keeps its centroid (Deep Compression's linear init leaves some
        # empty in the tails; they cost nothing once indices are entropy coded).
        cb = torch.where(counts > 0, sums / counts.clamp_min(1), cb).sort().values
        prev = idx
    return cb


def optimal(x: torch.Tensor, k: int, *, gen: torch.Generator | None = None) -> torch.Tensor:
    """Exact minimum-MSE 1-D clustering (Ckmeans-style dynamic programming, ``kmeans1d``)."""
    import kmeans1d

    gen = gen or torch.Generator().manual_seed(0)
    xs = _cap(x.double(), OPTIMAL_MAX_SAMPLES, gen)
    _, centroids = kmeans1d.cluster(xs.numpy(), k)
    return torch.tensor(centroids, dtype=torch.float64).sort().values


def quantile_bins(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-mass codebook: k bins holding (nearly) equal counts, each valued at its mean."""
    xs = x.double()
    order = torch.argsort(xs, stable=True)
    n = xs.numel()
    ranks = torch.empty(n, dtype=torch.int64)
    ranks[order] = torch.arange(n)
    idx = (ranks * k) // n
    sums = torch.bincount(idx, weights=xs, minlength=k)
    counts = torch.bincount(idx, minlength=k).clamp_min(1)
    return sums / counts, idx


def fit_codebook(
    x: torch.Tensor,
    k: int,
    *,
    algorithm: Algorithm = "kmeans",
    init: Init = "linear",
    gen: torch.Generator | None = None,
    max_samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook (float32, sorted, at most ``k`` entries) and int64 indices of ``x``.

    Values are rounded to float32 before assignment, so ``codebook[indices]`` is exactly the
    float32 value the layer computes with. Inputs with at most ``k`` distinct values get
    those values (lossless).
    """
    x = x.detach().flatten().float()
    if x.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    # Few distinct values are kept exactly; on huge inputs a subsample rules that out cheaply.
    few = x.numel() <= (1 << 22) or torch.unique(x[:: max(1, x.numel() >> 16)]).numel() <= k
    uniq = torch.unique(x) if few else x[:0]
    if few and uniq.numel() <= k:
        return uniq, torch.searchsorted(uniq, x)
    if algorithm == "quantile":
        cb, idx = quantile_bins(x, k)
        cb32 = cb.float()
        return _drop_empty(cb32, idx)
    if algorithm == "optimal":
        cb = optimal(x, k, gen=gen)
    elif algorithm == "kmeans":
        cb = kmeans(x, k, init=init, gen=gen, max_samples=max_samples)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: kmeans, optimal, quantile")
    cb32 = torch.unique(cb.float())  # float32 rounding may merge neighbours; keeps it sorted
    return _drop_empty(cb32, assign(x, cb32))


def _drop_empty(cb: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove unused entries (renumbering indices) so the codebook holds only shared values."""
    used = torch.bincount(idx, minlength=cb.numel()) > 0
    if bool(used.all()):
        return cb, idx
    remap = torch.cumsum(used.long(), 0) - 1
    return cb[used], remap[idx]


def _cap(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    if x.numel() <= n:
        return x
    return x[torch.randperm(x.numel(), generator=gen)[:n]]


def empirical_entropy_bits(symbols: np.ndarray | torch.Tensor) -> float:
    """n * H(p) in bits, p the empirical symbol distribution (order-0 entropy bound)."""
    s = np.asarray(symbols).ravel()
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    p = counts / s.size
    return float(-(counts * np.log2(p)).sum())


def rowwise_kmeans(
    x: torch.Tensor, k: int, *, iters: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """One 1-D k-means codebook per row of ``x`` (rows x n), all rows at once.

    Centroids start at the rows' quantiles; Lloyd steps assign by the midpoints between
    sorted centroids (``searchsorted``), so a step costs O(n log k) per row. Centroids end
    fp16-exact (rounded, then every value reassigned to its nearest), so they store in 16
    bits losslessly. Returns (codebooks rows x k, sorted; codes rows x n, uint8 when k <= 256).
    """
    x = x.detach().float()
    rows, n = x.shape
    k = max(1, min(k, n))
    qs = torch.linspace(0, 1, k)
    cb = torch.quantile(x, qs, dim=1).T.contiguous()  # (rows, k)
    idx = torch.zeros(rows, n, dtype=torch.int64)
    for step in range(iters + 1):
        cb, _ = cb.sort(dim=1)
        if step == iters:
            cb = cb.half().float().sort(dim=1).values
        mid = (cb[:, 1:] + cb[:, :-1]) / 2
        new = torch.searchsorted(mid.contiguous(), x.contiguous())
        if step == iters or (step and torch.equal(new, idx)):
            idx = new
            break
        idx = new
        sums = torch.zeros(rows, k).scatter_add_(1, idx, x)
        counts = torch.zeros(rows, k).scatter_add_(1, idx, torch.ones_like(x))
        cb = torch.where(counts > 0, sums / counts.clamp_min(1), cb)
    if step != iters:  # converged early: still make the centroids fp16-exact
        cb = cb.half().float().sort(dim=1).values
        mid = (cb[:, 1:] + cb[:, :-1]) / 2
        idx = torch.searchsorted(mid.contiguous(), x.contiguous())
    return cb, idx.to(torch.uint8 if k <= 256 else torch.int32)
