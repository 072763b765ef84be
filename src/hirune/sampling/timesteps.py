"""Time grids: which times a sampler visits.

A grid is a 1-D float64 tensor of times, strictly decreasing from (near) noise to (near)
data, every entry a time the model may be evaluated at.  A sampler steps from each entry
to the *next entry of the list*, and from the last entry it takes one final jump to the
data (the denoised estimate x_0).  Nothing assumes a fixed stride, so every spacing --
including hand-made subsets -- works with every sampler.

Spacings for discrete schedules (integer steps, as in the papers and diffusers):
    leading   0, k, 2k, ... (k = T // n), reversed         (DDIM paper, Stable Diffusion)
    trailing  T-1, T-1-T/n, ..., rounded                  (Lin et al. 2023: starts at pure noise)
    linspace  n integers evenly spaced over [0, T-1]      (includes both ends)
and `respace` for Improved DDPM's section counts ("ddim50", "10,15,20").
Spacings for any process (fractional times):
    uniform   evenly spaced in t over [t_min, t_max]
    karras    EDM noise levels sigma_i^(1/rho) evenly spaced, rho = 7 (Karras et al. 2022)
    logsnr    evenly spaced in log-SNR (DPM-Solver)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..process.base import GaussianProcess

DISCRETE_SPACINGS = ("leading", "trailing", "linspace")
CONTINUOUS_SPACINGS = ("uniform", "karras", "logsnr")
SPACINGS = DISCRETE_SPACINGS + CONTINUOUS_SPACINGS


def default_spacing(process: GaussianProcess) -> str:
    return "trailing" if process.discrete else "uniform"


def time_grid(
    process: GaussianProcess, steps: int, spacing: str | None = None, *, rho: float = 7.0,
    sigma_min: float | None = None, sigma_max: float | None = None,
) -> Tensor:
    """A decreasing grid of `steps` times for `process` (see module docstring).

    sigma_min / sigma_max bound the EDM noise levels sigma/alpha of the karras and logsnr
    spacings; they default to the process's range.
    """
    spacing = spacing or default_spacing(process)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {list(SPACINGS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if spacing in DISCRETE_SPACINGS:
        if not process.discrete:
            raise ValueError(f"spacing {spacing!r} needs a discrete schedule; for {process!r} "
                             f"use one of {list(CONTINUOUS_SPACINGS)}")
        return _discrete_grid(process.T, steps, spacing)
    if spacing == "uniform":
        return torch.linspace(process.t_max, process.t_min, steps, dtype=torch.float64)
    lo_p, hi_p = float(process.edm_sigma(process.t_min)), float(process.edm_sigma(process.t_max))
    lo = lo_p if sigma_min is None else sigma_min
    hi = hi_p if sigma_max is None else sigma_max
    if not (math.isfinite(hi) and 0 < lo < hi):
        hint = "sigma_max (e.g. 80)" if not math.isfinite(hi) else "sigma_min (e.g. 0.002)"
        raise ValueError(f"{spacing!r} spacing needs 0 < sigma_min < sigma_max < inf; {process!r} "
                         f"spans sigma/alpha in [{lo_p:.4g}, {hi_p:.4g}]: pass {hint}")
    if lo < lo_p * (1 - 1e-9) or hi > hi_p * (1 + 1e-9):
        raise ValueError(f"sigma range [{lo:.4g}, {hi:.4g}] lies outside [{lo_p:.4g}, {hi_p:.4g}], "
                         f"the sigma/alpha that {process!r} spans")
    u = torch.linspace(0, 1, steps, dtype=torch.float64)
    if spacing == "karras":
        sig = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        sig = torch.exp(math.log(hi) + u * (math.log(lo) - math.log(hi)))
    return process.t_from_edm_sigma(sig)


def _discrete_grid(T: int, n: int, spacing: str) -> Tensor:
    if n > T:
        raise ValueError(f"steps must be <= the {T} training steps for spacing {spacing!r}, got {n}")
    # diffusers' own NumPy arithmetic, so that exact .5 ties (e.g. T = 1000: trailing n = 48,
    # linspace n = 27) round the same way as its set_timesteps.
    if spacing == "leading":
        ts = (np.arange(n) * (T // n))[::-1]
    elif spacing == "trailing":
        # np.arange with a float step can overshoot by one entry (n = 61: a final -1)
        ts = np.round(np.arange(T, 0, -T / n))[:n] - 1
    else:
        ts = np.linspace(0, T - 1, n).round()[::-1]
    return torch.tensor(ts.copy(), dtype=torch.float64)


def respace(T: int, section_counts: str | list[int]) -> Tensor:
    """Improved DDPM's respacing (Nichol & Dhariwal 2021, sec. 4.4): split [0, T) into
    equal sections and keep `count` evenly strided steps in each.  "ddimN" asks for a
    single integer stride giving exactly N steps.  Returns a decreasing grid."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            n = int(section_counts[4:])
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == n:
                    return torch.arange(0, T, stride, dtype=torch.float64).flip(0)
            raise ValueError(f"no integer stride gives exactly {n} of {T} steps")
        section_counts = [int(c) for c in section_counts.split(",")]
    size, extra = divmod(T, len(section_counts))
    kept, start = [], 0
    for i, count in enumerate(section_counts):
        length = size + (1 if i < extra else 0)
        if not 1 <= count <= length:
            raise ValueError(f"cannot keep {count} steps in a section of {length} steps")
        stride = (length - 1) / (count - 1) if count > 1 else 1
        idx = 0.0
        for _ in range(count):  # accumulated as in Improved DDPM, so .5 ties round alike
            kept.append(start + round(idx))
            idx += stride
        start += length
    return torch.tensor(sorted(set(kept)), dtype=torch.float64).flip(0)


def check_grid(process: GaussianProcess, ts: Tensor, increasing: bool = False) -> Tensor:
    """Validate a grid: 1-D, finite, strictly monotone, inside [t_min, t_max]."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 1:
        raise ValueError(f"time grid must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    if not torch.isfinite(ts).all():
        raise ValueError("time grid has non-finite entries")
    d = ts.diff()
    if len(ts) > 1 and not ((d > 0).all() if increasing else (d < 0).all()):
        raise ValueError(f"time grid must be strictly {'increasing' if increasing else 'decreasing'}")
    tol = 1e-9 * max(1.0, process.t_max)
    if ts.min() < process.t_min - tol or ts.max() > process.t_max + tol:
        raise ValueError(f"time grid leaves [{process.t_min}, {process.t_max}] of {process!r}: "
                         f"[{float(ts.min()):.6g}, {float(ts.max()):.6g}]")
    return ts
