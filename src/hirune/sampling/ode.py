"""Probability-flow ODE samplers: Euler, midpoint, Heun and adaptive RK45.

For x_t = alpha x_0 + sigma eps the marginal velocity
    dx/dt = E[alpha' x_0 + sigma' eps | x_t] = alpha' x0_hat + sigma' eps_hat
is at once the probability-flow ODE of the score SDE (Song et al. 2021, eq. 13) and the
flow-matching ODE (Lipman et al. 2023), so one set of solvers serves diffusion and flow
models.  They integrate in the process's own time t.  A decreasing grid samples (noise
to data, then the jump to x_0); an increasing grid runs the ODE backwards, from data to
noise, which is how flow models are inverted.
"""

from __future__ import annotations

from torch import Tensor

from .integrators import FIXED_STEPS, euler_step, rk45
from .common import SampleOutput, SamplerCall


def _fixed_step_sampler(method: str):
    step = FIXED_STEPS[method]

    def sampler(denoiser, x: Tensor, ts, *, cond=None, callback=None,
                return_trajectory: bool = False) -> SampleOutput:
        call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory,
                         increasing=len(ts) > 1 and float(ts[-1]) > float(ts[0]))
        velocity = lambda t, y: call.predict(y, t).velocity  # noqa: E731
        for i, t, s in call.pairs():
            # A step that lands on sigma = 0 (flows at t = 0) is an Euler step, as in EDM:
            # the velocity there is undefined for x0/eps models (and singular for VP).
            on_data = float(call.process.sigma(s)) == 0
            x = (euler_step if on_data else step)(velocity, t, s, x)
            call.record(i, t, x)
        return call.finish(x, denoise=float(call.ts[-1]) <= float(call.ts[0]))

    sampler.__name__ = f"ode_{method}"
    sampler.__doc__ = f"Probability-flow / flow ODE with fixed {method} steps over the grid ts."
    return sampler


ode_euler = _fixed_step_sampler("euler")
ode_midpoint = _fixed_step_sampler("midpoint")
ode_heun = _fixed_step_sampler("heun")


def ode_rk45(denoiser, x: Tensor, ts, *, rtol: float = 1e-5, atol: float = 1e-5, cond=None,
             callback=None, return_trajectory: bool = False) -> SampleOutput:
    """Adaptive Dormand-Prince RK45 from ts[0] to ts[-1] (only the end points are used)."""
    increasing = len(ts) > 1 and float(ts[-1]) > float(ts[0])
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory, increasing=increasing)
    t0, t1 = float(call.ts[0]), float(call.ts[-1])
    velocity = lambda t, y: call.predict(y, t).velocity  # noqa: E731
    x, _ = rk45(velocity, x, t0, t1, rtol=rtol, atol=atol)
    call.record(0, t0, x)
    return call.finish(x, denoise=not increasing)
