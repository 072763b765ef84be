"""Reverse-time SDE samplers (Song et al. 2021): Euler-Maruyama and predictor-corrector.

The reverse of dx = f x dt + g dw is dx = [f x - g^2 score] dt + g dw_bar, run from
t_max down to the last grid time (eq. 6); `GaussianProcess.sde` gives f and g^2.
"""

from __future__ import annotations

from torch import Tensor

from ..process.denoiser import Prediction
from ..process.base import GaussianProcess
from .ancestral import ancestral_step
from .common import SampleOutput, SamplerCall, noise_like
from .langevin import langevin_corrector_step

PREDICTORS = ("euler_maruyama", "ancestral")


def _check_regular(call: SamplerCall) -> None:
    """The reverse SDE's drift f = alpha'/alpha is infinite where alpha = 0 (flows at t = 1)."""
    if float(call.process.alpha(call.ts[0])) == 0:
        raise ValueError(f"the reverse SDE of {call.process!r} is singular at t = {float(call.ts[0])} "
                         "(alpha = 0): start the grid below it, e.g. spacing='karras' with "
                         "sigma_max=80, or use the ddpm sampler")


def euler_maruyama_step(process: GaussianProcess, x: Tensor, pred: Prediction, t: float,
                        s: float, noise: Tensor) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE from t to s < t."""
    f, g2 = (v.to(x) for v in process.sde(t))
    h = t - s
    return x - (f * x - g2 * pred.score) * h + (g2 * h).sqrt() * noise


def euler_maruyama(denoiser, x: Tensor, ts, *, generator=None, cond=None, callback=None,
                   return_trajectory: bool = False) -> SampleOutput:
    """Euler-Maruyama on the reverse SDE over the grid, then the jump to the data."""
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    _check_regular(call)
    for i, t, s in call.pairs():
        pred = call.predict(x, t)
        x = euler_maruyama_step(call.process, x, pred, t, s, noise_like(x, generator))
        call.record(i, t, x, pred)
    return call.finish(x)


def predictor_corrector(denoiser, x: Tensor, ts, *, snr: float = 0.16, corrector_steps: int = 1,
                        predictor: str = "euler_maruyama", generator=None, cond=None,
                        callback=None, return_trajectory: bool = False) -> SampleOutput:
    """PC sampling (Alg. 2-3 of Song et al. 2021): at each grid time, `corrector_steps`
    Langevin corrector steps at signal-to-noise ratio `snr`, then one predictor step
    (reverse-SDE Euler-Maruyama, or the ancestral "reverse diffusion" step)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; valid: {list(PREDICTORS)}")
    if snr <= 0 or corrector_steps < 0:
        raise ValueError("need snr > 0 and corrector_steps >= 0")
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    _check_regular(call)
    for i, t, s in call.pairs():
        for _ in range(corrector_steps):
            x = langevin_corrector_step(x, call.predict(x, t).score, snr, noise_like(x, generator))
        pred, z = call.predict(x, t), noise_like(x, generator)
        if predictor == "euler_maruyama":
            x = euler_maruyama_step(call.process, x, pred, t, s, z)
        else:
            x = ancestral_step(call.process, x, pred, t, s, "large", z)
        call.record(i, t, x, pred)
    return call.finish(x)
