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
    tolerance.  Near pure noise eps_hat(y) ~ y, so (*) is barely a contraction (and
    degenerate where alpha_u = 0, flows at t = 1); there x0_hat, which hardly depends on
    y, is held instead:
        y = alpha_u x0_hat(y, u) + sigma_u (x - alpha_l x0_hat(y, u)) / sigma_l.
    Each step holds the form whose fixed-point map contracts faster (estimated for
    unit-variance data); a step that does not converge raises a RuntimeWarning.
The first step starts from the data itself (alpha = 1, sigma = 0).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..process.base import Coefficients
from .common import SampleOutput, SamplerCall


def _solve_step(call: SamplerCall, x: Tensor, cl: Coefficients, u: float, exact: bool,
                max_iter: int, tol: float) -> tuple[Tensor, bool]:
    cu = call.process.coefficients(u, x)
    a_u, s_u, a_l, s_l = (float(v.max()) for v in (cu.alpha, cu.sigma, cl.alpha, cl.sigma))
    # Contraction factor of each form for unit-variance Gaussian data, where
    # d x0_hat/dy = alpha_u / r and d eps_hat/dy = sigma_u / r (r = alpha_u^2 + sigma_u^2):
    # hold whichever prediction makes the fixed-point map contract faster.
    k_eps = abs(s_u - a_u * s_l / a_l) * s_u if a_l > 0 else float("inf")
    k_x0 = abs(a_u - s_u * a_l / s_l) * a_u if s_l > 0 else float("inf")
    hold_x0 = k_x0 < k_eps
    y = x
    for _ in range(max_iter if exact else 1):
        pred = call.predict(y, u)
        if hold_x0:
            y_new = cu.alpha * pred.x0 + cu.sigma * (x - cl.alpha * pred.x0) / cl.sigma
        else:
            y_new = cu.alpha * (x - cl.sigma * pred.eps) / cl.alpha + cu.sigma * pred.eps
        change = float((y_new - y).abs().max()) / (1 + float(y_new.abs().max()))
        y = y_new
        if change <= tol:
            return y, True
    return y, not exact  # plain inversion makes no claim to have converged


def ddim_invert(denoiser, x0: Tensor, ts, *, exact: bool = False, max_iter: int = 50,
                tol: float | None = None, cond=None, callback=None,
                return_trajectory: bool = False) -> SampleOutput:
    """Invert DDIM sampling over the decreasing grid `ts`: returns the noise at ts[0].

    exact=False is the plain inversion; exact=True solves each step by fixed-point
    iteration (at most `max_iter` evaluations per step, stopping at relative change `tol`;
    default 1e-10 in float64, else 10 machine epsilons of x0's dtype, the floor that
    rounding leaves).
    """
    if tol is None:
        tol = 1e-10 if x0.dtype == torch.float64 else 10 * torch.finfo(x0.dtype).eps
    call = SamplerCall(denoiser, x0, ts, cond, callback, return_trajectory)
    ones = torch.ones((), dtype=x0.dtype, device=x0.device)
    lower = Coefficients(ones, 0 * ones, 0 * ones, 0 * ones)  # the data: alpha 1, sigma 0
    x, times, unconverged = x0, call.ts.flip(0).tolist(), []
    for i, u in enumerate(times):
        if float(call.process.sigma(u)) == 0:  # flows at t = 0: the data itself
            y = x
        else:
            y, converged = _solve_step(call, x, lower, u, exact, max_iter, tol)
            if not converged:
                unconverged.append(u)
        x, lower = y, call.process.coefficients(u, y)
        call.record(i, u, x)
    if not torch.isfinite(x).all():
        raise FloatingPointError("inversion produced non-finite values")
    if unconverged:
        warnings.warn(f"exact DDIM inversion did not converge in {max_iter} iterations at "
                      f"{len(unconverged)} of {len(times)} steps (first at t = {unconverged[0]:.4g}); "
                      "use more steps", RuntimeWarning, stacklevel=2)
    return SampleOutput(x, call.nfe, call.trajectory)
