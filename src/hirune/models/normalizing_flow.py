"""Normalizing flows: RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018) for
images, RealNVP couplings and MAF (Papamakarios et al. 2017) for vectors.

A flow f maps data x to z = f(x) with a standard normal prior, so

    log p(x) = log N(f(x); 0, I) + log |det df/dx|.

`flow.log_prob(x)` is exact; `flow.sample(n, temperature=T)` draws z ~ N(0, T^2 I) and
inverts; `flow.encode(x) -> (z (B, D), logdet (B,))` and `flow.decode(z)` are the two
directions.  The multi-scale image flows factor out half of the channels after each level
(RealNVP 3.6): those go straight to the prior, and `encode` returns every factored part
flattened into one z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import check_fields
from .flow_layers import (ActNorm, AffineCoupling, InvertibleConv1x1, MAFLayer, Reverse, Squeeze, channel_mask,
                     checkerboard_mask, vector_mask)

FLOW_KINDS = ("realnvp", "glow", "maf")


@dataclass(frozen=True)
class FlowConfig:
    """kind: realnvp | glow (images (C, H, W), or vectors (D,) for realnvp) | maf (vectors).
    shape: the data shape.  levels: multi-scale levels (images; each squeezes 2x2, so H and
    W must be divisible by 2**levels).  steps: couplings (or flow steps) per level, or in
    total for vectors.  hidden: width of the coupling networks."""

    kind: str = "realnvp"
    shape: tuple[int, ...] = (2,)
    levels: int = 2
    steps: int = 4
    hidden: int = 64

    def __post_init__(self):
        check_fields(self)
        if self.kind not in FLOW_KINDS:
            raise ValueError(f"FlowConfig.kind must be one of {list(FLOW_KINDS)}, got {self.kind!r}")
        if len(self.shape) not in (1, 3):
            raise ValueError(f"FlowConfig.shape must be (D,) or (C, H, W), got {self.shape}")
        if len(self.shape) == 1 and self.shape[0] < 2:
            raise ValueError(f"FlowConfig.shape {self.shape}: a coupling or autoregressive flow needs at least "
                             "2 dimensions (one half conditions the other)")
        if self.kind == "maf" and len(self.shape) != 1:
            raise ValueError("maf is a flow for vectors; use realnvp or glow for images")
        if self.kind == "glow" and len(self.shape) != 3:
            raise ValueError("glow is a flow for images; use realnvp or maf for vectors")
        if len(self.shape) == 3:
            side = 2 ** self.levels
            if self.shape[1] % side or self.shape[2] % side:
                raise ValueError(f"FlowConfig: {self.levels} levels need H and W divisible by {side}, "
                                 f"got {self.shape[1]} x {self.shape[2]}")
        for name in ("levels", "steps", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"FlowConfig.{name} must be positive, got {getattr(self, name)}")


def _realnvp_level(c: int, h: int, w: int, steps: int, hidden: int, last: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [AffineCoupling(checkerboard_mask(c, h, w, i % 2), hidden) for i in range(steps)]
    if not last:
        layers.append(Squeeze())
        layers += [AffineCoupling(channel_mask(4 * c, i % 2), hidden) for i in range(steps)]
    return layers


def _glow_level(c: int, steps: int, hidden: int, generator) -> list[nn.Module]:
    layers: list[nn.Module] = [Squeeze()]
    for i in range(steps):
        layers += [ActNorm(4 * c), InvertibleConv1x1(4 * c, generator),
                   AffineCoupling(channel_mask(4 * c, i % 2), hidden)]
    return layers


class Flow(nn.Module):
    """A normalizing flow built from a `FlowConfig`; see the module docstring."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = c = config
        g = torch.Generator().manual_seed(0)
        self.levels = nn.ModuleList()
        self.factor_shapes: list[tuple[int, ...]] = []
        if len(c.shape) == 1:
            dim = c.shape[0]
            layers: list[nn.Module] = []
            for i in range(c.steps):
                if c.kind == "maf":
                    layers += [MAFLayer(dim, c.hidden), Reverse()]
                else:
                    layers += [ActNorm(dim), AffineCoupling(vector_mask(dim, i % 2), c.hidden)]
            self.levels.append(nn.ModuleList(layers))
            self.factor_shapes.append((dim,))
            return
        ch, h, w = c.shape
        for level in range(c.levels):
            last = level == c.levels - 1
            if c.kind == "realnvp":
                # RealNVP squeezes at the end of a level; Glow at its start
                layers = _realnvp_level(ch, h, w, c.steps, c.hidden, last)
                out_c, out_h, out_w = (ch, h, w) if last else (4 * ch, h // 2, w // 2)
            else:
                layers = _glow_level(ch, c.steps, c.hidden, g)
                out_c, out_h, out_w = 4 * ch, h // 2, w // 2
            self.levels.append(nn.ModuleList(layers))
            keep = out_c if last else out_c // 2
            self.factor_shapes.append((out_c - keep, out_h, out_w) if not last else (out_c, out_h, out_w))
            ch, h, w = keep, out_h, out_w

    @property
    def dim(self) -> int:
        return math.prod(self.config.shape)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(x) flattened to (B, D), and log |det df/dx| (B,)."""
        logdet = x.new_zeros(len(x))
        parts = []
        h = x
        for i, layers in enumerate(self.levels):
            for layer in layers:
                h, ld = layer(h)
                logdet = logdet + ld
            if i < len(self.levels) - 1:  # factor out half of the channels
                out, h = h.chunk(2, dim=1)
                parts.append(out.flatten(1))
        parts.append(h.flatten(1))
        return torch.cat(parts, dim=1), logdet

    def decode(self, z: Tensor) -> Tensor:
        """x = f^-1(z) for z (B, D)."""
        sizes = [math.prod(s) for s in self.factor_shapes]
        chunks = list(z.split(sizes, dim=1))
        h = chunks[-1].reshape(len(z), *self.factor_shapes[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                out = chunks[i].reshape(len(z), *self.factor_shapes[i])
                h = torch.cat([out, h], dim=1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        return h

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) (B,) in nats: standard normal prior plus the log-determinant."""
        z, logdet = self.encode(x)
        prior = -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        return prior + logdet

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """n samples with z ~ N(0, temperature^2 I) (temperature < 1: Glow's reduced-
        temperature sampling, sharper and less diverse)."""
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype, device=p.device) * temperature
        return self.decode(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)
