"""Time embeddings, and the embedding of SDXL's micro-conditions (sizes and crops) that joins them."""

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


class MicroEmbedding(torch.nn.Module):
    """SDXL's micro-conditioning (Podell et al. 2023, sec. 2.2): K scalars per image --
    original height and width, crop top and left, target height and width -- each embedded
    by sinusoids of width `dim` (like t, in their own units: pixels), concatenated and mapped
    by a two-layer MLP to the time embedding's width, to be added to it (SDXL concatenates
    them with the pooled text embedding before one MLP; adding them is the same thing
    split in two).  micro (B, K) -> (B, emb_dim).

    The last layer starts at zero, so a fresh network is the same function whatever the
    scalars are (as the augmentation level of super-resolution: a new input starts as a
    no-op and learns how much it matters)."""

    def __init__(self, count: int, dim: int, emb_dim: int):
        super().__init__()
        self.count, self.dim = count, dim
        self.mlp = torch.nn.Sequential(torch.nn.Linear(count * dim, emb_dim), torch.nn.SiLU(),
                                       torch.nn.Linear(emb_dim, emb_dim))
        self.zero_last_()

    @torch.no_grad()
    def zero_last_(self) -> None:
        """The last layer at zero: the embedding starts as a no-op (again, after a network's own init)."""
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, micro: Tensor) -> Tensor:
        if micro.dim() != 2 or micro.shape[1] != self.count:
            raise ValueError(f"micro of shape {tuple(micro.shape)} is not valid; valid: (B, {self.count}), the "
                             "micro-conditions (original height, width, crop top, left, target height, width)")
        B = len(micro)
        freqs = timestep_embedding(micro.float().reshape(-1), self.dim).reshape(B, self.count * self.dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


def add_micro(embed: MicroEmbedding | None, micro: Tensor | None, pooled: Tensor | None, batch: int,
              network: str) -> Tensor | None:
    """`pooled` (the vector joining the time embedding, or None) plus the micro-conditions'
    embedding, micro (B, K) or (1, K) broadcast to `batch` rows; a network built with
    `embed` needs micro, and one built without refuses it."""
    if (micro is not None) != (embed is not None):
        raise ValueError(f"micro goes with a {network} built with micro_conditions > 0, and such a {network} needs it "
                         f"(micro given: {micro is not None}, micro_conditions={embed.count if embed else 0})")
    if micro is None:
        return pooled
    vector = embed(micro.to(embed.mlp[0].weight.device).expand(batch, -1))
    return vector if pooled is None else pooled + vector
