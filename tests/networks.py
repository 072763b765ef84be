"""Small networks of every kind the denoiser protocol serves, for the tests of tests/models/
and tests/nn/: milliseconds on a CPU; the named sizes are checked by their counts."""

from __future__ import annotations

import torch

from hirune.models import build_model

# Four levels, so 28 -> 14 -> 7 -> 4 and 8 -> 4 -> 2 -> 1 exercise odd sizes; attention at 1/2.
UNET = dict(channels=16, channel_mult=(1, 1, 2, 2), num_res_blocks=1, attention_resolutions=(2,), head_channels=8)
TRANSFORMERS = {"dit": dict(size="T/2", depth=2, hidden_size=64, num_heads=4),
                "uvit": dict(size="tiny", depth=3, hidden_size=64, num_heads=4)}


def unet(**overrides) -> torch.nn.Module:
    return build_model("unet", {**UNET, "in_channels": 1, **overrides})


def small(kind: str, **overrides) -> torch.nn.Module:
    """A DiT or U-ViT for 8 x 8 single-channel images."""
    return build_model(kind, {**TRANSFORMERS[kind], "in_channels": 1, "image_size": 8, **overrides})


def perturb_zero_init(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Give the zero-initialised layers (adaLN, outputs, GroupNorm biases) random values, so
    that every branch contributes and every parameter receives a gradient."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model


def perturbed(run, std: float = 0.03):
    """The loaded run with its zero-initialised layers given random values (a trained
    network's stand-in: every conditioning path reaches the output)."""
    import dataclasses

    fresh, params = build_model("unet", dataclasses.asdict(run.model.config)), dict(run.model.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if not p.any():
                params[name].copy_(torch.randn(p.shape, generator=g) * std)
    return run
