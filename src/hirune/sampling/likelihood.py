"""Log-likelihood through the probability-flow ODE (Song et al. 2021, appendix D.2;
Chen et al. 2018, FFJORD).

Along the ODE dx/dt = u(x, t) the log-density obeys d log p_t(x_t)/dt = -div u(x_t, t), so

    log p_{t0}(x) = log p_{t_max}(x_{t_max}) + int_{t0}^{t_max} div u(x_t, t) dt,

integrated from the data up to noise.  The divergence is exact (one backward pass per
dimension; for low dimension) or Hutchinson's estimate E[z^T (du/dx) z] with one fixed
Rademacher/Gaussian probe per trajectory (for images).  Results come in nats and in bits
per dimension, -log p / (D log 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.dequantize import bits_per_dim
from .integrators import FIXED_STEPS, rk45

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass
class LogLikelihood:
    """log_prob, nll (nats) and bits_per_dim per sample (B,); stderr: the Monte-Carlo
    standard error of the Hutchinson estimate per sample (None for exact divergence or a
    single probe); nfe: velocity evaluations per trajectory."""

    log_prob: Tensor
    nll: Tensor
    bits_per_dim: Tensor
    stderr: Tensor | None
    nfe: int


def _pieces(process, t0: float, t1: float) -> list[tuple[float, float]]:
    """[t0, t1] cut at the integer times of a discrete process: its alpha is piecewise
    linear, so the probability-flow velocity jumps there and no solver may step across."""
    if not process.discrete:
        return [(t0, t1)]
    knots = [t0, *range(math.floor(t0) + 1, math.ceil(t1)), t1]
    return list(zip(knots[:-1], knots[1:]))


def _divergence(u: Tensor, x: Tensor, method: str, probe: Tensor | None) -> Tensor:
    if method == "hutchinson":
        (g,) = torch.autograd.grad(u, x, probe, create_graph=False)
        return (g * probe).flatten(1).sum(1)
    uf, div = u.flatten(1), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(uf.shape[1]):
        (g,) = torch.autograd.grad(uf[:, i].sum(), x, retain_graph=i + 1 < uf.shape[1])
        div = div + g.flatten(1)[:, i]
    return div


def ode_log_likelihood(denoiser, x: Tensor, *, divergence: str = "exact", solver: str = "rk45",
                       steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
                       t_start: float | None = None, repeats: int = 1, probe: str = "rademacher",
                       prior_log_prob=None, generator: torch.Generator | None = None,
                       cond: dict | None = None) -> LogLikelihood:
    """log p_{t_start}(x) for data x (B, ...) under the model's probability-flow ODE.

    solver: "rk45" (adaptive, rtol/atol) or a fixed-step "euler" / "midpoint" / "heun" with
    `steps` uniform steps.  On a discrete schedule the integral is cut at every integer
    time (the velocity of the piecewise-linear extension jumps there), with at least one
    step per piece: about T evaluations at the least.  t_start defaults to the process's t_min.  repeats: independent
    Hutchinson probes per sample (their spread gives `stderr`).  prior_log_prob: log p at
    t_max (default: the process's Gaussian prior).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {list(DIVERGENCES)}")
    if solver != "rk45" and solver not in FIXED_STEPS:
        raise ValueError(f"unknown solver {solver!r}; valid: {['rk45', *FIXED_STEPS]}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {list(PROBES)}")
    if repeats < 1 or (repeats > 1 and divergence == "exact"):
        raise ValueError(f"repeats must be 1 for the exact divergence and >= 1 for "
                         f"Hutchinson's estimate, got {repeats}")
    if not torch.isfinite(x).all():
        raise ValueError("x has non-finite values")
    process, cond = denoiser.process, cond or {}
    t0 = process.t_min if t_start is None else float(t_start)
    B, shape = x.shape[0], x.shape[1:]
    D = x[0].numel()
    xr = x.repeat_interleave(repeats, dim=0)
    probes = None
    if divergence == "hutchinson":
        z = torch.randn(xr.shape, generator=generator, dtype=x.dtype, device=x.device)
        probes = z.sign() if probe == "rademacher" else z
    nfe = 0

    def f(t: float, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            xt = y[:, :D].reshape(-1, *shape).detach().requires_grad_(True)
            u = denoiser(xt, t, **cond).velocity
            div = _divergence(u, xt, divergence, probes)
        return torch.cat([u.detach().flatten(1), div.detach()[:, None]], dim=1)

    y = torch.cat([xr.flatten(1), torch.zeros(len(xr), 1, dtype=x.dtype, device=x.device)], 1)
    pieces = _pieces(process, t0, process.t_max)
    for a, b in pieces:
        # evaluate the end of a piece from the inside (alpha(b) uses the next slope)
        b_in = b - 1e-9 * max(1.0, abs(b)) if len(pieces) > 1 else b
        fp = (lambda t, y, b_in=b_in: f(min(t, b_in), y)) if len(pieces) > 1 else f
        if solver == "rk45":
            y, _ = rk45(fp, y, a, b, rtol=rtol, atol=atol,
                        first_step=(b - a) if len(pieces) > 1 else None)
        else:
            n = max(1, round(steps * (b - a) / (process.t_max - t0)))
            grid = torch.linspace(a, b, n + 1, dtype=torch.float64)
            for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
                y = FIXED_STEPS[solver](fp, t, s, y)
    x_T, integral = y[:, :D].reshape(-1, *shape), y[:, D]
    prior = process.prior_log_prob(x_T) if prior_log_prob is None else prior_log_prob(x_T)
    logp = (prior + integral).reshape(B, repeats)
    if not torch.isfinite(logp).all():
        raise FloatingPointError("log-likelihood is not finite: the velocity was not finite "
                                 "along some trajectory (an x0 model at sigma = 0? pass t_start > 0)")
    stderr = logp.std(1) / math.sqrt(repeats) if repeats > 1 else None
    logp = logp.mean(1)
    return LogLikelihood(logp, -logp, bits_per_dim(-logp, D), stderr, nfe)
