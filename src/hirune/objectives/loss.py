"""What every objective returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Loss:
    loss: Tensor                 # scalar to minimise
    per_sample: Tensor           # (B,) the (weighted) loss of each sample, detached
    t: Tensor                    # (B,) the times drawn
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalar parts, detached
    reconstruction: Tensor | None = None  # autoencoders: x_hat, for the discriminator's step
    rows: Tensor | None = None   # (B,) per_sample with its graph, for losses that weigh rows (prior preservation)
