"""Loss weightings over time: which noise levels a denoising loss cares about.

Every regression target differs from eps by a time-dependent factor once x_t is fixed,
so a weighting is stated once, on the squared eps error, and converted to the target the
network regresses (`eps_error_factor`):

    min_snr      min(SNR, gamma) on the x0 error (Hang et al. 2023);
    likelihood   lambda(t) = g(t)^2 on the score error (Song, Durkan, Murray & Ermon 2021,
                 "Maximum likelihood training of score-based diffusion models"), which on
                 the eps error is  g^2 / sigma^2 = -d log SNR / dt.  With it the denoising
                 loss integrated over t is the diffusion term of the variational bound
                 on -log p(x) (Kingma et al. 2021, VDM eq. 17, up to the factor 1/2 and
                 the sum over dimensions), so a network trained this way is trained for
                 bits/dim.

The likelihood weight peaks sharply at low noise (about 1/t on the VP SDE), so its loss
has a large variance when t is uniform.  `sample_likelihood_times` draws t from the
density w(t) / Z instead -- uniform in log-SNR, an exact inverse-CDF draw on any process
-- and the loss then carries the constant weight Z / (t_max - t_min), an unbiased
estimate of the same objective (Song et al. 2021 sec. 5, importance sampling).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..process.parameterization import from_x0_eps
from ..process.base import Coefficients, GaussianProcess

WEIGHTINGS = ("none", "min_snr", "likelihood")


def eps_error_factor(target: str, c: Coefficients) -> Tensor:
    """||eps_hat - eps||^2 / ||target_hat - target||^2 at fixed x_t (broadcasts like c).

    Any target is linear, a x0 + b eps; holding x_t = alpha x0 + sigma eps fixed ties the
    errors, d x0 = -(sigma / alpha) d eps, so d target = (b alpha - a sigma) / alpha d eps."""
    one, zero = torch.ones_like(c.alpha), torch.zeros_like(c.alpha)
    a, b = from_x0_eps(target, one, zero, c), from_x0_eps(target, zero, one, c)
    return c.alpha**2 / (b * c.alpha - a * c.sigma) ** 2


def min_snr_weight(snr: Tensor, target: str, gamma: float) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023): the x0-loss weight min(SNR, gamma), expressed for the
    regressed target.  Since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and (VP)
    ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2, the weights are min(SNR, gamma) / SNR for eps,
    min(SNR, gamma) for x0, and min(SNR, gamma) / (SNR + 1) for v; at SNR = 0 the eps
    weight takes its limit 1."""
    clipped = snr.clamp(max=gamma)
    if target == "eps":
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if target == "x0":
        return clipped
    if target == "v":
        return clipped / (snr + 1)
    raise ValueError(f"min_snr weighting is defined for 'eps', 'x0' and 'v' targets, not {target!r}")


def log_snr_range(process: GaussianProcess) -> tuple[float, float]:
    """(log SNR at t_max, log SNR at t_min): the span the likelihood weighting integrates.
    Refused for discrete schedules (their bound is over steps: objective='hybrid') and
    where it is infinite (flows reach SNR = 0 at t = 1; a VP/VE SDE does not)."""
    if process.discrete:
        raise ValueError(f"likelihood weighting is for continuous-time processes (vp, subvp, ve); {process!r} "
                         "is discrete: its variational bound is the sum over steps (objective='hybrid')")
    lo, hi = (float(process.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (process.t_max, process.t_min))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"likelihood weighting needs a finite log-SNR range over [t_min, t_max]; {process!r} "
                         f"spans [{lo}, {hi}] (SNR reaches 0 or infinity). Valid processes: vp, subvp, ve")
    return lo, hi


def likelihood_weight(process: GaussianProcess, t: Tensor) -> Tensor:
    """w(t) = g(t)^2 / sigma(t)^2 = -d log SNR / dt = 2 (sigma'/sigma - alpha'/alpha), the
    weight on the squared eps error that makes the score loss likelihood-weighted."""
    alpha, sigma, dalpha, dsigma = process.coefficients64(torch.as_tensor(t, dtype=torch.float64))
    return 2 * (dsigma / sigma - dalpha / alpha)


def sample_likelihood_times(process: GaussianProcess, n: int, generator: torch.Generator | None = None,
                            device: torch.device | str = "cpu") -> Tensor:
    """n times (float64) with density w(t) / Z on [t_min, t_max]: log SNR uniform on its
    range, mapped back to t (exact: the CDF of w is linear in log SNR)."""
    lo, hi = log_snr_range(process)
    where = generator.device if generator is not None else torch.device(device)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=where).cpu()
    lam = lo + u * (hi - lo)
    t = process.t_from_edm_sigma(torch.exp(-0.5 * lam))  # edm sigma = sigma / alpha = exp(-log SNR / 2)
    return t.clamp(process.t_min, process.t_max).to(device)


def likelihood_mean_weight(process: GaussianProcess) -> float:
    """Z / (t_max - t_min): the constant weight of the loss under `sample_likelihood_times`,
    so that E_{t ~ w/Z}[weight * l(t)] = E_{t ~ U}[w(t) l(t)]."""
    lo, hi = log_snr_range(process)
    return (hi - lo) / (process.t_max - process.t_min)
