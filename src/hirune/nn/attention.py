"""Multi-head self-attention over the pixels of a feature map (DDPM, ADM)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import group_norm, zero_


class SelfAttention2d(nn.Module):
    """x + proj(attention(qkv(GroupNorm(x)))) over the H*W positions of x: (B, C, H, W).

    The output projection starts at zero, so the block starts as the identity (ADM).
    Attention runs through `F.scaled_dot_product_attention` (flash / memory-efficient
    kernels where available).  In channels_last memory the (B, H*W, C) token view is free.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # (B, HW, C)
        qkv = self.qkv(tokens).view(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                              # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)                     # (B, heads, HW, d)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))         # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)
