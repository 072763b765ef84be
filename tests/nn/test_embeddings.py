"""hirune.nn.embeddings: the sinusoidal time embedding stays float32 under bf16 autocast, so
t = 999 and t = 1000 stay apart; seen at the input of the time MLP of a UNet and an MLP."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from networks import perturb_zero_init, unet


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_time_999_and_1000_differ_under_bf16_autocast(kind):
    model = perturb_zero_init(unet() if kind == "unet" else build_model("mlp", dim=2))
    seen = []
    model.time_embed[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.randn(1, 1, 8, 8) if kind == "unet" else torch.randn(1, 2)
    x = torch.cat([x, x])  # one sample at two times
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([999.0, 1000.0]))
    assert seen[0].dtype == torch.float32  # the sinusoids stay float32
    assert not torch.equal(seen[0][0], seen[0][1])
    assert not torch.equal(out[0], out[1])
