"""Time embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (B,) times (Vaswani et al. 2017; DDPM): (B, dim), float32.

    Computed in float32 even under autocast or for half-precision t: in bfloat16 the
    timestep 999 rounds to 1000 (8 bits of mantissa), which shifts every frequency.
    """
    if dim < 2:
        raise ValueError(f"embedding dim must be >= 2, got {dim}")
    device_type = t.device.type if t.device.type in ("cpu", "cuda") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        t = t.float() if t.dtype != torch.float64 else t
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        args = t[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
