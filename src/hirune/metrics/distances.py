"""Sample-quality distances between point clouds (B, D): sliced Wasserstein and energy; the
straightness of sampling paths (rectified flow)."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the
    projections of a and b (equal sample sizes; the directions are fixed by `seed`)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (N, D) clouds of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0)).to(a)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    return float((pa - pb).abs().mean())


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Szekely's energy distance 2 E|A-B| - E|A-A'| - E|B-B'| (V-statistic)."""
    if a.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError("need two (N, D) clouds of the same dimension")
    ab, aa, bb = torch.cdist(a, b).mean(), torch.cdist(a, a).mean(), torch.cdist(b, b).mean()
    return float(2 * ab - aa - bb)


def straightness(trajectory: list[Tensor], times) -> float:
    """How far a sampled ODE path is from a straight line at constant speed (Liu et al.
    2023, "Flow straight and fast", eq. 7 normalised by the time span):

        S = 1/|T| int || (x_end - x_start) / T - dx/dt ||^2 dt,   T = t_end - t_start,

    with dx/dt constant on each step of the trajectory (x at every grid time), averaged
    over samples and dimensions.  0 for straight paths: one Euler step is then exact."""
    times = [float(t) for t in times]
    if len(times) != len(trajectory):
        raise ValueError(f"need one time per trajectory point, got {len(times)} times for {len(trajectory)} points")
    total = times[-1] - times[0]
    mean_v = (trajectory[-1] - trajectory[0]) / total
    s = 0.0
    for a, b, ta, tb in zip(trajectory[:-1], trajectory[1:], times[:-1], times[1:]):
        v = (b - a) / (tb - ta)
        s += float(((v - mean_v) ** 2).mean()) * abs(tb - ta)
    return s / abs(total)


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, for images in [-1, 1] (range 2)."""
    mse = (a.double() - b.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-30))
