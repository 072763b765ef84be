"""Ancestral sampling: DDPM (Ho et al. 2020, Alg. 2) and Improved DDPM (Nichol & Dhariwal
2021) on any time grid, which makes it their respaced sampler as well."""

from __future__ import annotations

import torch
from torch import Tensor

from ..process.denoiser import Prediction
from ..process.base import GaussianProcess
from .common import SampleOutput, SamplerCall, noise_like

VARIANCES = ("small", "large", "learned")


def ancestral_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: float, s: float,
                   variance: str, noise: Tensor) -> Tensor:
    """One draw from p(x_s | x_t) = q(x_s | x_t, x_0 = x0_hat) with the chosen variance:
    "small" beta tilde, "large" beta (respaced over t -> s), or "learned", Improved DDPM
    eq. 15: exp(v log beta + (1 - v) log beta tilde)."""
    mean, var_small, var_large = process.posterior(pred.x0, x, t, s)
    if variance == "small":
        var = var_small
    elif variance == "large":
        var = var_large
    else:
        if pred.var_frac is None:
            raise ValueError("variance='learned' needs a Denoiser built with learned_variance=True")
        tiny = torch.finfo(x.dtype).tiny  # clamp before the log: beta tilde is 0 at the first step
        var = torch.exp(pred.var_frac * torch.log(var_large.clamp(min=tiny))
                        + (1 - pred.var_frac) * torch.log(var_small.clamp(min=tiny)))
    return mean + var.sqrt() * noise


def ddpm(denoiser, x: Tensor, ts, *, variance: str = "small", generator=None, cond=None,
         callback=None, return_trajectory: bool = False) -> SampleOutput:
    """DDPM ancestral sampling from x (noise at ts[0]) down the grid ts, then to the data."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {list(VARIANCES)}")
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    for i, t, s in call.pairs():
        pred = call.predict(x, t)
        x = ancestral_step(call.process, x, pred, t, s, variance, noise_like(x, generator))
        call.record(i, t, x, pred)
    return call.finish(x)
