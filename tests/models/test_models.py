"""hirune.models (the package's __init__): `build_model` / `model_config` from dicts and
keywords (JSON-style lists, unknown kinds, keys and sizes, wrongly typed or out-of-range
values refused with the key named, configs checked when built directly) and `blocks`, the
units FSDP shards.  Each network's own tests are in test_<network>.py."""

from __future__ import annotations

import re

import pytest
import torch

from hirune.models import blocks
from hirune.models import MODELS, MLPConfig, UNetConfig, build_model, model_config

# Small enough for milliseconds on a CPU.
SMALL = {"dit": dict(size="T/2", depth=2, hidden_size=64, num_heads=4),
         "uvit": dict(size="tiny", depth=3, hidden_size=64, num_heads=4)}


def small(kind: str, **overrides) -> torch.nn.Module:
    return build_model(kind, {**SMALL[kind], "in_channels": 1, "image_size": 8, **overrides})


def test_blocks_are_the_units_fsdp_shards():
    dit, uvit = small("dit", depth=3), small("uvit", depth=5)
    assert blocks(dit) == list(dit.blocks)
    assert blocks(uvit) == [*uvit.in_blocks, *uvit.out_blocks, uvit.mid_block]


def test_config_from_json_style_dict():
    cfg = model_config("unet", {"channel_mult": [1, 2], "attention_resolutions": [2], "dropout": 0})
    assert cfg.channel_mult == (1, 2) and cfg.attention_resolutions == (2,) and cfg.dropout == 0.0


@pytest.mark.parametrize("kind, config, error, match", [
    # every kind is named, sorted (the list grows with each network: built from MODELS)
    ("transformer", {}, ValueError, r"unknown model kind 'transformer'; valid: " + re.escape(str(sorted(MODELS)))),
    ("unet", {"chanels": 64}, ValueError, r"unknown UNetConfig keys \['chanels'\]; valid: .*'channels'"),
    ("mlp", {"hidden_dim": 64}, ValueError, r"unknown MLPConfig keys.*valid: .*'hidden'"),
    ("unet", {"size": "huge"}, ValueError, r"unknown unet size 'huge'; valid: \['base', 'small', 'tiny'\]"),
    ("unet", {"channels": "64"}, TypeError, r"UNetConfig.channels must be int, got '64'"),
    ("unet", {"channels": 64.0}, TypeError, r"UNetConfig.channels"),
    ("unet", {"learned_sigma": 1}, TypeError, r"UNetConfig.learned_sigma must be bool"),
    ("unet", {"channel_mult": (1, 2.5)}, TypeError, r"UNetConfig.channel_mult"),
    ("unet", {"num_classes": 10.0}, TypeError, r"UNetConfig.num_classes"),
    ("mlp", {"time_scale": "1000"}, TypeError, r"MLPConfig.time_scale must be float"),
    ("unet", {"channel_mult": (1, 2), "attention_resolutions": (16,)}, ValueError,
     r"attention_resolutions \(16,\) are downsample factors.*\(1, 2\)"),
    ("unet", {"channels": 48, "head_channels": 32}, ValueError, r"head_channels=32 does not divide"),
    ("unet", {"channel_mult": ()}, ValueError, r"channel_mult must be non-empty"),
    ("unet", {"dropout": 1.0}, ValueError, r"dropout"),
    ("mlp", {"dim": 0}, ValueError, r"MLPConfig.dim must be positive"),
])
def test_bad_configs_are_refused_with_the_key_named(kind, config, error, match):
    with pytest.raises(error, match=match):
        build_model(kind, config)


def test_configs_are_checked_when_built_directly():
    with pytest.raises(TypeError, match="UNetConfig.num_res_blocks"):
        UNetConfig(num_res_blocks="2")
    with pytest.raises(TypeError, match="MLPConfig.depth"):
        MLPConfig(depth=None)
