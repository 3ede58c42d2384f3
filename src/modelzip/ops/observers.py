"""Calibration math: choose the clipping range of an activation from its histogram.

Pure functions on a ``Histogram`` (counts over [lo, hi] plus the number of exact zeros, which
every range represents exactly, so they never count as error). Four rules:

- ``minmax``: the observed range; nothing is clipped.
- ``percentile``: clip the outer ``100 - p`` percent of the mass on each side.
- ``mse``: the range whose 8-bit (or ``bits``) grid has the least squared error over the
  histogram (rounding error of each bin, distance to the clip point outside).
- ``kl``: the range whose quantized distribution is closest to the observed one in
  Kullback-Leibler divergence (TensorRT's entropy calibration, generalised to two-sided
  ranges by shrinking both ends together, with the clipped mass left out of Q's total).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modelzip.ops import affine

OBSERVERS = ("minmax", "percentile", "mse", "kl")
#: Histogram resolution: fine enough that a 256-level grid spans about 8 bins per level.
BINS = 2048


@dataclass
class Histogram:
    """Counts of the nonzero values in ``BINS`` equal bins over [lo, hi], and the zeros."""

    counts: np.ndarray
    lo: float
    hi: float
    zeros: float = 0.0

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, len(self.counts) + 1)
        return (edges[:-1] + edges[1:]) / 2

    @property
    def total(self) -> float:
        return float(self.counts.sum() + self.zeros)


def new_histogram(lo: float, hi: float, bins: int = BINS) -> Histogram:
    """An empty histogram over [lo, hi] (widened to include 0, as every grid does)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        hi = lo + 1e-8
    return Histogram(np.zeros(bins, dtype=np.float64), lo, hi)


def add(hist: Histogram, x: torch.Tensor) -> None:
    """Count the values of ``x`` into ``hist`` (values outside [lo, hi] go to the edge bins)."""
    x = x.detach().float().reshape(-1)
    nz = x[x != 0]
    hist.zeros += float(x.numel() - nz.numel())
    nz = nz.clamp(hist.lo, hist.hi)
    counts = torch.histc(nz, bins=len(hist.counts), min=hist.lo, max=hist.hi)
    hist.counts += counts.double().numpy()


def choose_range(
    hist: Histogram,
    observer: str,
    bits: int = 8,
    *,
    symmetric: bool = False,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """The (lo, hi) clipping range that ``observer`` picks for a ``bits``-wide grid.

    Example:
        >>> h = new_histogram(0.0, 1.0); add(h, torch.rand(1000))
        >>> choose_range(h, "minmax")[1] <= 1.0
        True
    """
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
    if observer == "minmax" or hist.counts.sum() == 0:
        return hist.lo, hist.hi
    if observer == "percentile":
        return _percentile_range(hist, percentile)
    candidates = _shrink_factors(len(hist.counts))
    score = _mse_score if observer == "mse" else _kl_score
    best = min(candidates, key=lambda a: score(hist, hist.lo * a, hist.hi * a, bits, symmetric))
    return float(hist.lo * best), float(hist.hi * best)


def _percentile_range(hist: Histogram, p: float) -> tuple[float, float]:
    if not 50.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {p}")
    # Zeros sit at 0 and are inside every range: place them in the cumulative mass there.
    centers, counts = hist.centers, hist.counts.copy()
    counts[np.argmin(np.abs(centers))] += hist.zeros
    cdf = np.cumsum(counts) / counts.sum()
    tail = (100.0 - p) / 100.0
    lo = float(np.interp(tail, cdf, centers)) if hist.lo < 0 else hist.lo
    hi = float(np.interp(1.0 - tail, cdf, centers)) if hist.hi > 0 else hist.hi
    return min(lo, 0.0), max(hi, 0.0)


def _shrink_factors(bins: int) -> np.ndarray:
    # Candidate ranges shrink both ends together, from the full range down to 1/16 of it.
    return np.arange(bins, bins // 16 - 1, -8) / bins


def _grid(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float, float, float]:
    """(scale, zero point, grid low, grid high) the quantizer builds for [lo, hi]."""
    signed = symmetric and lo < 0
    scale, zp = affine.qparams_from_range(
        torch.tensor(lo), torch.tensor(hi), bits, symmetric=symmetric, signed=signed
    )
    qmin, qmax = affine.qrange(bits, signed)
    s, z = float(scale), float(zp)
    return s, z, (qmin - z) * s, (qmax - z) * s


def _mse_score(hist: Histogram, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    scale, zp, glo, ghi = _grid(lo, hi, bits, symmetric)
    c, n = hist.centers, hist.counts
    width = (hist.hi - hist.lo) / len(n)
    clipped = np.clip(c, glo, ghi)
    # Rounding error of each bin: exact at its center while bins are finer than the grid
    # (values near zero round to zero: error x^2, not scale^2/12), uniform otherwise.
    on_grid = np.round(clipped / scale) * scale  # grid points: integer multiples of scale
    rounding = (clipped - on_grid) ** 2 if width <= scale else np.full_like(c, scale**2 / 12)
    return float((n * ((c - clipped) ** 2 + rounding)).sum())


def _kl_score(hist: Histogram, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    scale, zp, glo, ghi = _grid(lo, hi, bits, symmetric)
    qmin, qmax = affine.qrange(bits, symmetric and lo < 0)
    c, n = hist.centers, hist.counts
    # P: the observed distribution with the clipped mass folded into the edge bins.
    inside = (c >= glo) & (c <= ghi)
    if not inside.any():
        return float("inf")
    idx = np.nonzero(inside)[0]
    kept = n[idx]
    p = kept.copy()
    p[0] += n[: idx[0]].sum()
    p[-1] += n[idx[-1] + 1 :].sum()
    # Q: the grid's view of the *unclipped* in-range values: each level's mass spread evenly
    # over the bins that map to it. Clipped mass is missing from Q, so clipping costs KL.
    level = np.clip(np.round(c[idx] / scale) + zp, qmin, qmax).astype(np.int64) - qmin
    mass = np.bincount(level, weights=kept, minlength=qmax - qmin + 1)
    used = np.bincount(level, weights=(kept > 0).astype(np.float64), minlength=qmax - qmin + 1)
    q = np.where(kept > 0, mass[level] / np.maximum(used[level], 1.0), 0.0)
    total = p.sum()
    if total == 0:
        return float("inf")
    # Both are divided by P's total, so Q stays short by the clipped mass: normalising Q on
    # its own would make a range that clips everything onto one spike look perfect (KL 0),
    # which discrete data (8x8 digits: 17 grey levels) runs into. Bins where P has mass and
    # Q none (clipped edges) get a tiny Q instead of an infinite divergence.
    p, q = p / total, np.maximum(q / total, 1e-9)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
