"""A residual MLP for flat vectors (2-D toys, tabular data): the network of the demos.

    x (B, dim) -> linear -> depth x [h + fc2(SiLU(fc1(FiLM(LayerNorm(h), emb))))]
    -> LayerNorm, SiLU, zero-initialised linear -> (B, out_mult * dim)

Conditioning as in the UNet: t (B,) float32 is multiplied by `time_scale` (1 for discrete
schedules, e.g. 1000 for t in [0, 1]) before the float32 sinusoidal embedding; y (B,)
int64 labels with the null label `num_classes` (y=None: all null) add a class embedding.
The embedding modulates each block as LayerNorm(h) * (1 + scale) + shift (FiLM).
x of shape (B, *shape) is flattened and the output has shape (B, out_mult * shape[0],
*shape[1:]), so out_mult = 2 gives the (prediction, variance) halves a learned-variance
`Denoiser` splits on dim 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import timestep_embedding, zero_
from .config import check_fields


@dataclass(frozen=True)
class MLPConfig:
    """dim: size of a flattened sample.  hidden: width.  depth: residual blocks.
    out_mult: 2 for a learned variance.  Other fields as in `UNetConfig`."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    time_embed_dim: int = 128
    num_classes: int | None = None
    out_mult: int = 1
    dropout: float = 0.0
    time_scale: float = 1.0

    def __post_init__(self):
        check_fields(self)
        for name in ("dim", "hidden", "time_embed_dim", "out_mult", "num_classes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"MLPConfig.{name} must be positive, got {value}")
        if self.depth < 0:
            raise ValueError(f"MLPConfig.depth must be >= 0, got {self.depth}")
        if self.time_embed_dim < 2:
            raise ValueError(f"MLPConfig.time_embed_dim must be >= 2, got {self.time_embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MLPConfig.dropout must be in [0, 1), got {self.dropout}")


class MLPBlock(nn.Module):
    """h + fc2(dropout(SiLU(fc1(SiLU(LayerNorm(h) * (1 + scale) + shift))))), (scale, shift)
    a linear function of emb: (B, emb_dim), already through SiLU."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.dropout(F.silu(self.fc1(F.silu(z)))))


class MLP(nn.Module):
    """model(x, t, y=None) for x: (B, dim) or (B, *shape) with prod(shape) = dim."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = c = config
        self.time_embed = nn.Sequential(
            nn.Linear(c.time_embed_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        # one row per class plus the null label (index num_classes)
        self.class_embed = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.input = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(MLPBlock(c.hidden, c.hidden, c.dropout) for _ in range(c.depth))
        self.out_norm = nn.LayerNorm(c.hidden, elementwise_affine=False)
        self.output = zero_(nn.Linear(c.hidden, c.out_mult * c.dim))  # initial output exactly 0

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.config
        freqs = timestep_embedding(t * c.time_scale, c.time_embed_dim)  # float32
        emb = self.time_embed(freqs.to(self.input.weight.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, c.num_classes, dtype=torch.long)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("class labels given to an unconditional MLP (num_classes=None)")
        emb = F.silu(emb)
        flat = x.flatten(1)
        if flat.shape[1] != c.dim:
            raise ValueError(f"MLP(dim={c.dim}) got x of shape {tuple(x.shape)}")
        h = self.input(flat)
        for block in self.blocks:
            h = block(h, emb)
        out = self.output(F.silu(self.out_norm(h)))
        return out.view(x.shape[0], c.out_mult * x.shape[1], *x.shape[2:])
