"""Pure low-rank math: truncated SVD factors and the rank rules (ratio, energy).

A weight matrix ``W`` (m x n) is replaced by ``A @ B`` with ``A`` (m x r) and ``B`` (r x n);
that stores ``r * (m + n)`` numbers instead of ``m * n``, so it only pays when
``r < m * n / (m + n)``. No module walking here: tensors in, tensors out.

Example:
    >>> w = torch.randn(30, 20)
    >>> a, b = svd_factors(w, 20)
    >>> torch.allclose(a @ b, w, atol=1e-5)
    True
"""

from __future__ import annotations

import heapq
import math

import torch


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D weight, largest first (computed in float64)."""
    return torch.linalg.svdvals(w.detach().double())


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``(A, B)`` of ``w`` in the Frobenius norm (Eckart-Young).

    The singular values are split evenly (``A = U sqrt(S)``, ``B = sqrt(S) V^T``) so both
    factors have similar scales, which keeps fine-tuning and later quantization well
    conditioned. Computed in float64, returned in ``w``'s dtype.
    """
    if w.dim() != 2:
        raise ValueError(f"svd_factors needs a 2-D matrix, got shape {tuple(w.shape)}")
    max_rank = min(w.shape)
    if not 1 <= rank <= max_rank:
        raise ValueError(f"rank must be in [1, {max_rank}] for a {w.shape[0]}x{w.shape[1]} matrix")
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = root[:, None] * vh[:rank]
    return a.to(w.dtype), b.to(w.dtype)


def energy_kept(s: torch.Tensor, rank: int) -> float:
    """Fraction of the squared singular values (the Frobenius energy) the top ``rank`` keep."""
    sq = s.double() ** 2
    total = float(sq.sum())
    return 1.0 if total == 0 else float(sq[:rank].sum()) / total


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose kept energy is at least ``energy`` (in (0, 1])."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    sq = s.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    cum = torch.cumsum(sq, 0) / total
    # A tiny slack so that energy=1.0 does not demand more than float64 can represent.
    r = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype))) + 1
    return min(r, len(s))


def factored_params(m: int, n: int, rank: int) -> int:
    """Numbers stored by the two factors of an m x n matrix at ``rank``."""
    return rank * (m + n)


def rank_for_ratio(m: int, n: int, ratio: float) -> int:
    """The largest rank whose factors hold at most ``ratio`` of the m x n matrix (at least 1)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, min(min(m, n), math.floor(ratio * m * n / (m + n))))


def conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (out, in, *kernel) as the (out, in * prod(kernel)) matrix it applies."""
    return weight.reshape(weight.shape[0], -1)


def max_useful_rank(m: int, n: int) -> int:
    """The largest rank that still stores fewer numbers than the dense m x n matrix (>= 1)."""
    return max(1, min(min(m, n), math.ceil(m * n / (m + n)) - 1))


def allocate_ranks(
    shapes: dict[str, tuple[int, int]], spectra: dict[str, torch.Tensor], budget: int
) -> dict[str, int]:
    """Ranks across layers whose factors hold at most ``budget`` numbers in total.

    Greedy on relative energy per parameter: every layer starts at rank 1; the next rank step
    bought is the one whose singular value adds the largest share of its layer's energy per
    number it costs (``m + n``). Spectra are sorted, so each layer's gains only fall and the
    greedy choice is the exact optimum of the relaxed problem. Ranks stop at
    ``max_useful_rank`` (beyond it the dense layer is smaller).
    """
    ranks = {name: 1 for name in shapes}
    spent = sum(m + n for m, n in shapes.values())
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        m, n = shapes[name]
        r, s = ranks[name], spectra[name].double()
        total = float((s**2).sum())
        if r < min(max_useful_rank(m, n), len(s)) and total > 0:
            heapq.heappush(heap, (-float(s[r] ** 2) / total / (m + n), name))

    for name in shapes:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        cost = sum(shapes[name])
        if spent + cost > budget:
            continue  # a cheaper layer may still fit
        ranks[name] += 1
        spent += cost
        push(name)
    return ranks
