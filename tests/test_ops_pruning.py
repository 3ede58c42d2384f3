"""Properties of the pure pruning math (ops/pruning.py) on random tensors."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.ops import pruning


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(1, 6),
    groups=st.integers(1, 4),
    m=st.sampled_from([2, 4, 8]),
    k=st.sampled_from([(), (3,), (2, 2)]),
    seed=st.integers(0, 1000),
)
def test_nm_keep_has_exactly_n_per_group_and_keeps_the_best(out, groups, m, k, seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, m + 1, (1,), generator=gen))
    scores = torch.rand((out, groups * m, *k), generator=gen)
    keep = pruning.nm_keep(scores, n, m)
    assert keep.shape == scores.shape
    g_keep = keep.movedim(1, -1).reshape(-1, m)
    g_score = scores.movedim(1, -1).reshape(-1, m)
    assert torch.all(g_keep.sum(1) == n)
    kept_min = torch.where(g_keep, g_score, torch.inf).min(1).values
    dropped_max = torch.where(g_keep, -torch.inf, g_score).max(1).values
    assert torch.all(kept_min >= dropped_max)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 1000),
)
def test_global_and_layer_masks_prune_exact_counts(sizes, sparsity, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(s, generator=gen) for i, s in enumerate(sizes)}
    targets = dict.fromkeys(scores, sparsity)
    layer = pruning.keep_smallest_out(scores, targets)
    for name, s in scores.items():
        assert int((~layer[name]).sum()) == round(sparsity * s.numel())
    glob = pruning.global_keep(scores, targets)
    assert sum(int((~m).sum()) for m in glob.values()) == round(sparsity * sum(sizes))


def test_protected_zeros_are_pruned_first():
    w = torch.tensor([0.0, 5.0, 0.0, 1.0])
    scores = pruning.protect_pruned(torch.tensor([9.0, 1.0, 9.0, 2.0]), w)
    assert pruning.keep_smallest_out({"w": scores}, {"w": 0.5})["w"].tolist() == [
        False,
        True,
        False,
        True,
    ]


def test_channels_to_keep_and_iterative_targets():
    imp = torch.tensor([3.0, 1.0, 4.0, 1.5, 9.0, 2.0])
    assert pruning.channels_to_keep(imp, 0.5).tolist() == [0, 2, 4]
    assert pruning.channels_to_keep(imp, 0.99).tolist() == [4]  # never empty
    assert pruning.iterative_sparsity(3, 3, 0.9) == 0.9
    assert abs(pruning.iterative_sparsity(1, 2, 0.75) - 0.5) < 1e-12
