"""Samplers: plain functions `sampler(denoiser, x, ts, **options) -> SampleOutput`.

x is the initial noise at ts[0] (`process.prior_sample`), ts a decreasing time grid
(`hirune.timesteps.time_grid`).  Every sampler steps from each grid time to the next entry
of the grid and ends with one jump to the data (the x_0 estimate at the last grid time).
`sample` builds the grid and the noise from names and seeds.
"""

from __future__ import annotations

import torch

from .timesteps import default_spacing, time_grid
from .ancestral import ddpm
from .common import SampleOutput, SamplerCall
from .ddim import ddim
from .dpm_solver import dpmpp_2m
from .inversion import ddim_invert
from .langevin import annealed_langevin
from .ode import ode_euler, ode_heun, ode_midpoint, ode_rk45
from .reverse_sde import euler_maruyama, predictor_corrector

SAMPLERS = {
    "ddpm": ddpm,                      # ancestral; variance small / large / learned
    "ddim": ddim,                      # eta = 0 deterministic
    "annealed_langevin": annealed_langevin,
    "euler_maruyama": euler_maruyama,  # reverse SDE
    "pc": predictor_corrector,         # predictor-corrector
    "euler": ode_euler,                # probability-flow / flow ODE
    "midpoint": ode_midpoint,
    "heun": ode_heun,
    "rk45": ode_rk45,
    "dpmpp_2m": dpmpp_2m,
}

STOCHASTIC = (ddpm, ddim, annealed_langevin, euler_maruyama, predictor_corrector)


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def sample(denoiser, shape: tuple[int, ...], sampler: str = "ddim", steps: int = 50,
           spacing: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
           device: str | torch.device = "cpu", grid_options: dict | None = None,
           progress: bool = False, **options) -> SampleOutput:
    """Draw samples of `shape` = (B, ...) by name: noise from `seed`, a grid of `steps` times
    with `spacing` (default: trailing for discrete schedules, uniform otherwise);
    `progress` shows a bar over the grid."""
    fn = get_sampler(name=sampler)
    process = denoiser.process
    if fn is ode_rk45:  # adaptive: only the end points of the grid matter
        steps, spacing = 2, spacing or "uniform"
    ts = time_grid(process, steps, spacing or default_spacing(process), **(grid_options or {}))
    generator = torch.Generator(device=device).manual_seed(seed)
    x = process.prior_sample(shape, generator, dtype, device, t=float(ts[0]))
    if fn in STOCHASTIC:
        options.setdefault("generator", generator)
    if not progress:
        return fn(denoiser, x, ts, **options)
    from tqdm.auto import tqdm

    user_callback = options.pop("callback", None)
    with tqdm(total=len(ts), desc=sampler, unit="step", leave=False) as bar:
        def callback(info: dict) -> None:
            bar.update(1)
            if user_callback is not None:
                user_callback(info)
        return fn(denoiser, x, ts, callback=callback, **options)


__all__ = ["SAMPLERS", "SampleOutput", "SamplerCall", "annealed_langevin", "ddim", "ddim_invert",
           "ddpm", "dpmpp_2m", "euler_maruyama", "get_sampler", "ode_euler", "ode_heun",
           "ode_midpoint", "ode_rk45", "predictor_corrector", "sample"]
