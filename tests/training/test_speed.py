"""`hirune bench train`: the diffusers twin is the same network, and the command runs."""

from __future__ import annotations

import json

import pytest

from hirune.cli import main
from hirune.models import build_model


@pytest.mark.parametrize("config", [
    {"size": "tiny", "in_channels": 1},
    {"size": "tiny", "in_channels": 1, "learned_sigma": True, "num_classes": 10},
    {"channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [1, 2],
     "head_channels": 16, "use_scale_shift_norm": True, "in_channels": 3},
])
def test_diffusers_twin_has_the_same_parameters(config):
    pytest.importorskip("diffusers")
    from hirune.training.speed import diffusers_twin

    ours = build_model("unet", **config)
    twin = diffusers_twin(ours.config, sample_size=28)
    c = ours.config
    # diffusers drops the middle attention's GroupNorm under scale-shift conditioning
    missing = 2 * c.channels * c.channel_mult[-1] if c.use_scale_shift_norm else 0
    assert sum(p.numel() for p in twin.parameters()) + missing == sum(p.numel() for p in ours.parameters())


def test_bench_train_prints_both_rates(capsys):
    pytest.importorskip("diffusers")
    assert main(["bench", "train", "ddpm-digits", "--batch", "8", "--steps", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["contestants"]) == {"hirune", "diffusers UNet2DModel"}
    assert result["ratio"] > 0 and result["batch"] == 8


def test_bench_train_mlp_has_no_peer_and_bad_input_exits_2(capsys):
    assert main(["bench", "train", "flow-two-moons", "--steps", "1", "--warmup", "0"]) == 0
    assert "UNet presets only" in capsys.readouterr().out
    assert main(["bench", "train", "no-such-preset"]) == 2
    assert "valid" in capsys.readouterr().err
