"""Where a denoiser loses: the error of its x0 estimate across noise levels."""

from __future__ import annotations

import torch

from ..process.denoiser import time_batch

# the noise levels of `denoising_error`: fractions of the way from t_min to t_max
NOISE_FRACTIONS = (0.01, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95, 1.0)


def fraction_time(process, fraction: float) -> float:
    """The time a fraction of the way from t_min to t_max (discrete processes: the nearest step)."""
    p = process
    return float(round(fraction * (p.T - 1))) if p.discrete else p.t_min + fraction * (p.t_max - p.t_min)


def denoising_error(denoiser, x0, fractions=NOISE_FRACTIONS, seed: int = 0, **cond) -> dict[str, float]:
    """Where a denoiser loses: the mean squared error of its x0 estimate per element,
    E |x0_hat(x_t, t) - x0|^2 / D, at each time `fraction_time(fraction)`, with x_t drawn
    from q(x_t | x0) with one seeded noise for all times.  The minimum at each t is the
    posterior variance Var(x0 | x_t) per element (for data N(0, I) on a variance-preserving
    process: sigma(t)^2, reached by x0_hat = alpha x_t).  cond: the network's condition
    keywords.  Returns {"x0_mse_t<t>": error} in the order of `fractions`."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
    out = {}
    with torch.no_grad():
        for f in fractions:
            t = fraction_time(denoiser.process, f)
            x_t = denoiser.process.q_sample(x0, torch.tensor(t, dtype=torch.float64), noise)
            x0_hat = denoiser(x_t, time_batch(t, x_t), **cond).x0
            out[f"x0_mse_t{t:g}"] = float((x0_hat.double() - x0.double()).square().mean())
    return out
