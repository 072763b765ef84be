"""DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic for eta = 0, DDPM-like for eta = 1."""

from __future__ import annotations

from torch import Tensor

from ..process.base import transition_from
from .common import SampleOutput, SamplerCall, noise_like


def ddim(denoiser, x: Tensor, ts, *, eta: float = 0.0, generator=None, cond=None,
         callback=None, return_trajectory: bool = False) -> SampleOutput:
    """x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,  c = eta * sqrt(beta tilde_{t->s}).

    With eta = 0 this is the Euler method for the probability-flow ODE in the scaled
    variables (x / alpha, sigma / alpha), the sampler every inversion method inverts.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    for i, t, s in call.pairs():
        pred = call.predict(x, t)
        ct, cs = pred.coeffs, call.process.coefficients(s, x)
        if eta > 0:
            _, var_ts = transition_from(ct, cs)
            c2 = eta**2 * var_ts * cs.sigma**2 / ct.sigma**2
            x = (cs.alpha * pred.x0 + (cs.sigma**2 - c2).clamp(min=0).sqrt() * pred.eps
                 + c2.sqrt() * noise_like(x, generator))
        else:
            x = cs.alpha * pred.x0 + cs.sigma * pred.eps
        call.record(i, t, x, pred)
    return call.finish(x)
