"""Retrieval fidelity of an embedding model against its original (pure tensor math).

``cosine_mean`` / ``cosine_min``: cosine similarity between each sentence's compressed and
original embedding. ``top10_overlap``: for every sentence, the share of its 10 nearest
neighbours (by cosine, itself excluded) under the original embeddings that are also among its
10 nearest under the compressed ones, averaged: what a search index built on the compressed
model would still return.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def top_k_overlap(emb: torch.Tensor, ref: torch.Tensor, k: int = 10, chunk: int = 1024) -> float:
    """Mean share of each row's ``k`` nearest neighbours (cosine, self excluded) kept."""
    n = emb.shape[0]
    if n <= k:
        raise ValueError(f"top-{k} overlap needs more than {k} embeddings, got {n}")
    a, b = F.normalize(emb.double(), dim=1), F.normalize(ref.double(), dim=1)
    total = 0.0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        sa, sb = a[rows] @ a.T, b[rows] @ b.T
        sa[torch.arange(len(rows)), rows] = -2.0  # never one's own neighbour
        sb[torch.arange(len(rows)), rows] = -2.0
        na, nb = sa.topk(k, dim=1).indices, sb.topk(k, dim=1).indices
        hits = (na.unsqueeze(2) == nb.unsqueeze(1)).any(dim=2).sum(dim=1)
        total += float(hits.sum())
    return total / (n * k)


def fidelity(emb: torch.Tensor, ref: torch.Tensor, k: int = 10) -> dict[str, float]:
    """``cosine_mean``, ``cosine_min`` and ``top{k}_overlap`` of ``emb`` against ``ref``."""
    cos = F.cosine_similarity(emb.double(), ref.double(), dim=1)
    out = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if emb.shape[0] > k:
        out[f"top{k}_overlap"] = top_k_overlap(emb, ref, k)
    return out


__all__ = ["fidelity", "top_k_overlap"]
