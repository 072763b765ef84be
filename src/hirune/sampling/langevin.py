"""Langevin dynamics: annealed Langevin sampling (NCSN, Song & Ermon 2019, Alg. 1) and the
Langevin corrector of the predictor-corrector sampler (Song et al. 2021, Alg. 4-5)."""

from __future__ import annotations

from torch import Tensor

from .common import SampleOutput, SamplerCall, batch_norm, noise_like


def langevin_corrector_step(x: Tensor, score: Tensor, snr: float, noise: Tensor) -> Tensor:
    """x + eps * score + sqrt(2 eps) z with eps = 2 (snr ||z|| / ||score||)^2, the step size
    that holds the signal-to-noise ratio of the update at `snr` (Alg. 5).  The norms are
    batch means of per-sample norms, as in the paper's code: per-sample ratios blow up
    in low dimension wherever the score vanishes (at the modes)."""
    step = 2 * (snr * batch_norm(noise).mean() / batch_norm(score).mean()) ** 2
    return x + step * score + (2 * step).sqrt() * noise


def annealed_langevin(denoiser, x: Tensor, ts, *, steps_per_level: int = 100,
                      step_size: float = 2e-5, denoise: bool = True, generator=None, cond=None,
                      callback=None, return_trajectory: bool = False) -> SampleOutput:
    """At each noise level t_i of the grid, run `steps_per_level` Langevin steps
        x <- x + a_i/2 * score(x, t_i) + sqrt(a_i) z,   a_i = step_size * sigma_i^2 / sigma_L^2,
    sigma_L being the last (smallest) level; then jump to the denoised estimate (NCSN v2)."""
    if steps_per_level < 1 or step_size <= 0:
        raise ValueError("steps_per_level must be >= 1 and step_size > 0")
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    sigma_last = call.process.sigma(call.ts[-1])
    if float(sigma_last) <= 0:
        raise ValueError(f"annealed Langevin needs sigma > 0 at every level; {call.process!r} has "
                         f"sigma = 0 at t = {float(call.ts[-1])}: end the grid above it")
    for i, t in enumerate(call.ts.tolist()):
        a = step_size * float(call.process.sigma(t) / sigma_last) ** 2
        for _ in range(steps_per_level):
            pred = call.predict(x, t)
            x = x + 0.5 * a * pred.score + a**0.5 * noise_like(x, generator)
        call.record(i, t, x, pred)
    return call.finish(x, denoise)
