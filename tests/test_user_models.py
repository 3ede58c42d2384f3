"""The user-model fixtures run on the data they are meant for."""

from __future__ import annotations

import numpy as np
import torch

import modelzip as mz
from modelzip.testing import user_models as um


def test_image_fixtures_run_on_digits_shapes():
    x = torch.rand(3, 1, 8, 8)
    for factory in (um.residual_cnn, um.concat_net, um.depthwise_cnn):
        assert factory()(x).shape == (3, 10)
    # control flow on the input: flat rows are reshaped to images
    assert um.residual_cnn()(x.flatten(1)).shape == (3, 10)


def test_tabular_fixture_loads_as_npz(tmp_path):
    path = um.write_tabular_npz(tmp_path / "cancer.npz")
    data = mz.load_data(str(path))
    assert data.sample_shape == (30,) and data.num_classes == 2
    with np.load(path) as f:
        assert np.isfinite(f["x"]).all()
    xb, _ = next(iter(data.train))
    assert um.tabular_mlp()(xb).shape == (len(xb), 2)


def test_tiny_bert_folder_builds_an_encoder(tmp_path):
    folder = um.write_tiny_bert(tmp_path / "bert")
    model = mz.load_model(str(folder))
    ids = torch.tensor([[101, 2023, 2003, 102, 0, 0]])
    out = model(ids)
    assert out.shape == (1, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(1), atol=1e-5)
