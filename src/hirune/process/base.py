"""Gaussian forward processes: the one vocabulary every model family shares.

Every family in hirune -- discrete DDPM schedules, the score-SDE family (VP, sub-VP, VE)
and the flow-matching paths -- corrupts data the same way:

    x_t = alpha(t) * x_0 + sigma(t) * eps,      eps ~ N(0, I).

Time runs from data to noise: t = t_data is clean data (or the least noisy level) and
t = t_max is (close to) pure noise, for *every* process, flows included.  Samplers walk
t downwards.  A process only has to say what alpha(t), sigma(t) and their time
derivatives are; everything else (SDE drift and diffusion, posteriors, signal-to-noise
ratio, the EDM noise level sigma/alpha, its inverse) follows here, once.

All coefficients are computed in float64 and cast to the dtype of the data at the point
of use (`Coefficients.at`), so schedules never lose precision in low-precision runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TimeLike = float | int | Tensor


def as_time(t: TimeLike) -> Tensor:
    """Times as a float64 tensor (scalars become 0-d tensors)."""
    return torch.as_tensor(t, dtype=torch.float64)


@dataclass(frozen=True)
class Coefficients:
    """alpha, sigma and their time derivatives at some times, shaped to broadcast over x.

    Each field has shape (B, 1, ..., 1) (or () for a scalar time) and the dtype of x.
    """

    alpha: Tensor
    sigma: Tensor
    dalpha: Tensor
    dsigma: Tensor


def transition_from(ct: Coefficients, cs: Coefficients) -> tuple[Tensor, Tensor]:
    """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) from the coefficients at t and s < t."""
    alpha_ts = ct.alpha / cs.alpha
    return alpha_ts, (ct.sigma**2 - alpha_ts**2 * cs.sigma**2).clamp(min=0)


class GaussianProcess:
    """Base class of a forward process x_t = alpha(t) x_0 + sigma(t) eps.

    Subclasses implement `alpha`, `sigma`, `dalpha`, `dsigma` (float64 tensors in, float64
    tensors out) and set `t_min`, `t_max`.  `t_min` is the smallest time a model is ever
    evaluated at (and where an ODE is still regular); the samplers end with one jump from
    the last time of their grid to the data (the denoised estimate), see `samplers`.
    """

    t_min: float
    t_max: float
    discrete: bool = False  # True when the model was trained only at integer times

    # --- to implement --------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def dalpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def dsigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    # --- derived quantities --------------------------------------------------------
    def coefficients(self, t: TimeLike, like: Tensor) -> Coefficients:
        """Coefficients at time(s) t, shaped (B, 1, ...) to broadcast over `like` (B, ...).

        t is a scalar (same time for the whole batch) or a (B,) tensor.
        """
        t = as_time(t).detach().cpu()  # schedules live on the CPU in float64; times are few
        if t.ndim == 1:
            t = t.reshape(-1, *([1] * (like.ndim - 1)))
        elif t.ndim != 0:
            raise ValueError(f"t must be a scalar or a (B,) tensor, got shape {tuple(t.shape)}")
        values = torch.stack(torch.broadcast_tensors(*self.coefficients64(t)))
        alpha, sigma, dalpha, dsigma = values.to(device=like.device, dtype=like.dtype)  # one copy
        return Coefficients(alpha, sigma, dalpha, dsigma)

    def coefficients64(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha, sigma, alpha', sigma') at float64 times t; override to share work."""
        return self.alpha(t), self.sigma(t), self.dalpha(t), self.dsigma(t)

    def log_snr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)  (Kingma et al. 2021, VDM)."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def edm_sigma(self, t: TimeLike) -> Tensor:
        """The noise level of the scaled variable x/alpha: sigma/alpha (Karras et al. 2022)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_edm_sigma(self, s: TimeLike) -> Tensor:
        """Invert `edm_sigma` (monotone increasing in t) by bisection in float64."""
        s = as_time(s)
        lo = torch.full_like(s, float(self.t_min))
        hi = torch.full_like(s, float(self.t_max))
        for _ in range(100):
            mid = (lo + hi) / 2
            above = self.edm_sigma(mid) > s
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Drift coefficient f(t) and squared diffusion g(t)^2 of the forward SDE
        dx = f(t) x dt + g(t) dw whose marginals are this process (VDM, appendix A):

            f = d log alpha / dt,     g^2 = d sigma^2 / dt - 2 f sigma^2.
        """
        alpha, sigma = self.alpha(t), self.sigma(t)
        f = self.dalpha(t) / alpha
        g2 = 2 * sigma * self.dsigma(t) - 2 * f * sigma**2
        return f, g2

    def q_sample(self, x0: Tensor, t: TimeLike, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = N(alpha x_0, sigma^2 I) given the noise."""
        c = self.coefficients(t, x0)
        return c.alpha * x0 + c.sigma * noise

    def transition(self, t: TimeLike, s: TimeLike, like: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) for s < t:
        alpha_{t|s} = alpha_t / alpha_s,  sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2."""
        return transition_from(self.coefficients(t, like), self.coefficients(s, like))

    def posterior(
        self, x0: Tensor, x_t: Tensor, t: TimeLike, s: TimeLike
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_s | x_t, x_0) for s < t: (mean, small variance, large variance).

        The posterior is Gaussian with (VDM eq. 25-26)
            mean = alpha_{t|s} sigma_s^2/sigma_t^2 x_t + alpha_s sigma_{t|s}^2/sigma_t^2 x_0,
            var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2            ("beta tilde", small),
        and the "large" choice of DDPM is the transition variance sigma_{t|s}^2 ("beta").
        For consecutive steps of a discrete VP schedule these are DDPM eq. 6-7; for any
        subset of steps they are the respaced betas of Improved DDPM.
        """
        ct, cs = self.coefficients(t, x_t), self.coefficients(s, x_t)
        alpha_ts, var_ts = transition_from(ct, cs)
        mean = (alpha_ts * cs.sigma**2 * x_t + cs.alpha * var_ts * x0) / ct.sigma**2
        var_small = var_ts * cs.sigma**2 / ct.sigma**2
        return mean, var_small, var_ts

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
        t: float | None = None,
    ) -> Tensor:
        """Initial noise N(0, sigma(t)^2 I) at t (default t_max); the alpha(t) x_0 part of
        the true marginal is dropped, which is exact where alpha(t) = 0."""
        noise = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return float(self.sigma(self.t_max if t is None else t)) * noise

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, sigma(t_max)^2 I) per sample, summed over all but the batch dim."""
        s = float(self.sigma(self.t_max))
        d = x[0].numel()
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * sq / s**2 - d * math.log(s) - 0.5 * d * math.log(2 * math.pi)

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}(t in [{self.t_min}, {self.t_max}])"
