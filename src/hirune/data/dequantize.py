"""Discrete data, one way for every family: images that hold `levels` evenly spaced values
are dequantized with uniform noise before any density sees them, and the density of the
dequantized data bounds the discrete likelihood (Theis et al. 2016; Ho et al. 2019).
Flows train and score on it exactly; diffusion and flow-matching runs score through the
probability-flow ODE (`hirune.sampling.likelihood`) on the same y."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bits_per_dim(nll_nats: Tensor, num_dims: int) -> Tensor:
    return nll_nats / (num_dims * math.log(2))


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None, u: Tensor | None = None) -> Tensor:
    """Uniform dequantization of images in [-1, 1] that hold `levels` evenly spaced values:
    value k (x = 2k / (levels - 1) - 1) becomes y = 2 (k + u) / levels - 1, u ~ U[0, 1), so
    the bins of width 2 / levels tile [-1, 1).  Any continuous density p on y bounds the
    discrete likelihood:  log P(k) >= E_u log p(y) + D log(2 / levels)  (Theis et al. 2016;
    Ho et al. 2019), which `discrete_nll` applies.  Every family (flows exactly, diffusion
    and flow matching through the probability-flow ODE) is scored on the same y.  `u`: the
    uniform draws, when the caller made them."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    k = torch.round((x + 1) * (levels - 1) / 2)
    if u is None:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return 2 * (k + u) / levels - 1


def check_quantized(x: Tensor, levels: int) -> None:
    """Refuse data that `dequantize` would silently misread: values outside [-1, 1], or
    between the `levels` grid values (already dequantized, or the wrong levels).  Run once
    on a dataset, not per batch (it reads values back from the device)."""
    if not x.numel():
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"dequantization expects images in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]")
    scaled = (x + 1) * (levels - 1) / 2
    if float((scaled - torch.round(scaled)).abs().max()) > 1e-3:
        raise ValueError(f"dequantization expects {levels} evenly spaced values in [-1, 1] (2k/{levels - 1} - 1); "
                         "these images hold values between them: already dequantized, or the wrong levels")


def discrete_nll(log_p_y: Tensor, num_dims: int, levels: int) -> Tensor:
    """The bound on -log P(k) (nats) from the density log p(y) of dequantized data."""
    return -(log_p_y + num_dims * math.log(2 / levels))
