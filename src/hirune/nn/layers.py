"""Small layers and init helpers shared by the models."""

from __future__ import annotations

from torch import nn


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """The number of GroupNorm groups for `channels`: 32 as in DDPM/ADM, or the largest
    divisor of `channels` below that when channels is small or not a multiple of 32
    (16 channels -> 16 groups, 48 -> 24, 3 -> 3)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-5)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` in place and return it (ADM's `zero_module`): a
    residual branch ending in it starts as the identity, an output layer as 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
