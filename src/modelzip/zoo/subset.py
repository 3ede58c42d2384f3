"""Fewer training samples: the same data with training on a fixed subset of its train split.

For benchmarks and searches sized to a machine: every trial (and the recipe it is compared
with) trains on the same ``n`` train samples, stratified by class and fixed (independent of
the training seed), while ``val`` and ``test`` stay whole, so that choosing and reporting
keep their full precision. The name says so: ``fashion-mnist (train subset 9000)``.

Example:
    >>> from modelzip.zoo.data import load_data
    >>> small = train_subset(load_data("digits"), 200)
    >>> small.sizes["train"], small.name
    (200, 'digits (train subset 200)')
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import DataLoader, TensorDataset

from modelzip.bundle import DataBundle
from modelzip.errors import DataError
from modelzip.zoo.data import stratified_split


def train_subset(data: DataBundle, n: int) -> DataBundle:
    """``data`` with its train loader cut to a fixed, stratified subset of ``n`` samples.

    Needs an in-memory train split (a ``TensorDataset``: the built-in sets, .npz, IDX
    folders); ``n`` must be at least the number of classes and below the train size."""
    loader = data.train
    ds = loader.dataset
    size = data.sizes.get("train", 0)
    if not isinstance(ds, TensorDataset):
        raise DataError(f"{data.name}: a train subset needs an in-memory data set, not a stream")
    if not data.num_classes <= n < size:
        raise DataError(
            f"{data.name}: train subset of {n} samples; valid: {data.num_classes} (one per "
            f"class) to {size - 1} (the train split holds {size})"
        )
    y = ds.tensors[-1].numpy()
    _, keep = stratified_split(y, n)
    idx = torch.from_numpy(keep)
    sub = TensorDataset(*(t[idx] for t in ds.tensors))
    gen = torch.Generator()
    if loader.generator is not None:  # the trainer reseeds it per run; keep its seed anyway
        gen.set_state(loader.generator.get_state())
    loaders = {
        **data.loaders,
        "train": DataLoader(sub, batch_size=loader.batch_size, shuffle=True, generator=gen),
    }
    return dataclasses.replace(
        data,
        name=f"{data.name} (train subset {n})",
        loaders=loaders,
        sizes={**data.sizes, "train": n},
    )


__all__ = ["train_subset"]
