"""Round trips of constrained models through the container (format independent)."""

import pytest
import torch

from modelzip.codec import container
from modelzip.context import Context
from modelzip.nn.constraints import AffineQuant, Mask, constrain
from modelzip.train import Trainer


def _compressed(lenet300):
    constrain(lenet300.fc1, "weight", Mask(lenet300.fc1.weight.abs() > 0.05))
    constrain(lenet300.fc1, "weight", AffineQuant(8, axis=0))
    constrain(lenet300.fc2, "weight", AffineQuant(4, symmetric=False, axis=None))
    return lenet300


def test_round_trip_is_bit_exact(lenet300, digits, tmp_path):
    model = _compressed(lenet300)
    path = tmp_path / "m.mzip"
    size = container.save(model, path)
    assert size == path.stat().st_size
    loaded, header = container.load(path)
    with torch.no_grad():
        for name in ("fc1.weight", "fc2.weight", "fc3.weight", "fc1.bias"):
            mod, attr = name.split(".")
            a = getattr(getattr(model, mod), attr)
            b = getattr(getattr(loaded, mod), attr)
            assert torch.equal(a, b), name
        x = digits.example(16)
        assert torch.equal(model(x), loaded(x))
    assert header["tensors"]["fc1.weight"]["kind"] == "affine"
    assert header["source"]["ref"] == "lenet300"


def test_write_is_atomic_when_interrupted(lenet300, tmp_path, monkeypatch):
    path = tmp_path / "m.mzip"
    container.save(lenet300, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(container.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        container.save(_compressed(lenet300), path)
    assert path.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.mzip"]  # no temp left behind


def test_masks_hold_through_finetuning(lenet300, digits):
    mask = lenet300.fc2.weight.abs() > lenet300.fc2.weight.abs().median()
    constrain(lenet300.fc2, "weight", Mask(mask))
    Trainer(progress=False).fit(lenet300, digits.train, epochs=1, lr=1e-2)
    w = lenet300.fc2.weight.detach()
    assert (w[~mask] == 0).all() and (w[mask] != 0).float().mean() > 0.99
    ctx = Context(data=digits, trainer=Trainer(progress=False))
    assert ctx.generator(1).initial_seed() != ctx.generator(2).initial_seed()
