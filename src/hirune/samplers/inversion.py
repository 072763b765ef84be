"""DDIM inversion: map data to the noise that deterministic DDIM sampling turns back into it.

Sampling with DDIM (eta = 0) over a decreasing grid t_0 > ... > t_{n-1} and then jumping to
the data is a deterministic map noise -> data.  Inversion walks the same grid the other
way.  Each DDIM step from y at the higher time u to x at the lower time l reads

    x = alpha_l x0_hat(y, u) + sigma_l eps_hat(y, u),

so inverting it means solving for y.  Holding eps_hat fixed and making x0 consistent with x,

    y = alpha_u (x - sigma_l eps_hat(y, u)) / alpha_l + sigma_u eps_hat(y, u),     (*)

a fixed-point equation in y.
  * plain inversion (Song et al. 2021, sec. 4.3; the one in common use): one pass of (*)
    with eps_hat evaluated at the current point, y := x.  The prediction lags a step
    behind, so the reconstruction drifts; the drift shrinks as steps get smaller.
  * exact inversion: iterate (*) to convergence (fixed-point inversion, as in Pan et al.
    2023 "AIDI" and Hong et al. 2024), so sampling the result returns the input to solver
    tolerance.  Where alpha_u = 0 (flows at t = 1) (*) is degenerate; there x0_hat is held
    instead: y = alpha_u x0_hat + sigma_u (x - alpha_l x0_hat) / sigma_l.
The first step starts from the data itself (alpha = 1, sigma = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..process import Coefficients
from .common import SampleOutput, SamplerRun


def _solve_step(run: SamplerRun, x: Tensor, cl: Coefficients, u: float, exact: bool,
                max_iter: int, tol: float) -> Tensor:
    cu = run.process.coefficients(u, x)
    hold_x0 = float(cu.alpha.max()) == 0.0 and float(cl.sigma.min()) > 0
    y = x
    for _ in range(max_iter if exact else 1):
        pred = run.predict(y, u)
        if hold_x0:
            y_new = cu.alpha * pred.x0 + cu.sigma * (x - cl.alpha * pred.x0) / cl.sigma
        else:
            y_new = cu.alpha * (x - cl.sigma * pred.eps) / cl.alpha + cu.sigma * pred.eps
        converged = float((y_new - y).abs().max()) <= tol * (1 + float(y_new.abs().max()))
        y = y_new
        if converged:
            break
    return y


def ddim_invert(denoiser, x0: Tensor, ts, *, exact: bool = False, max_iter: int = 50,
                tol: float = 1e-12, cond=None, callback=None,
                return_trajectory: bool = False) -> SampleOutput:
    """Invert DDIM sampling over the decreasing grid `ts`: returns the noise at ts[0].

    exact=False is the plain inversion; exact=True solves each step by fixed-point
    iteration (at most `max_iter` evaluations per step, stopping at relative change `tol`).
    """
    run = SamplerRun(denoiser, x0, ts, cond, callback, return_trajectory)
    ones = torch.ones((), dtype=x0.dtype, device=x0.device)
    lower = Coefficients(ones, 0 * ones, 0 * ones, 0 * ones)  # the data: alpha 1, sigma 0
    x, times = x0, run.ts.flip(0).tolist()
    for i, u in enumerate(times):
        if float(run.process.sigma(u)) == 0:  # flows at t = 0: the data itself
            y = x
        else:
            y = _solve_step(run, x, lower, u, exact, max_iter, tol)
        x, lower = y, run.process.coefficients(u, y)
        run.record(i, u, x)
    if not torch.isfinite(x).all():
        raise FloatingPointError("inversion produced non-finite values")
    return SampleOutput(x, run.nfe, run.trajectory)
