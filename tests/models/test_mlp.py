"""The MLP for points (hirune.models.mlp): flattening and restoring image-shaped inputs.  What
it shares with every network (zero at init, gradients, conditioning) is tested in
test_networks.py."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model


def test_mlp_flattens_and_restores_shape():
    mlp = build_model("mlp", dim=16, out_mult=2)
    assert mlp(torch.randn(3, 1, 4, 4), torch.rand(3)).shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="dim=16"):
        mlp(torch.randn(3, 15), torch.rand(3))
