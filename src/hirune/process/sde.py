"""Continuous-time SDEs of Song et al. 2021 ("Score-based generative modeling through SDEs").

Each class states its forward SDE dx = f(t) x dt + g(t) dw as in the paper (eq. 9-11 and
appendix B) together with the closed-form marginal q(x_t | x_0) = N(alpha x_0, sigma^2 I).
`GaussianProcess.sde` derives (f, g^2) from the marginals; the tests check that the two
agree, which pins both.  Time runs over [0, 1] from data to noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GaussianProcess, TimeLike, as_time


class _BetaIntegral(GaussianProcess):
    """Shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max
        self.t_min, self.t_max = t_min, 1.0

    def beta(self, t: TimeLike) -> Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def beta_integral(self, t: TimeLike) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        t = as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(-0.5 * self.beta_integral(t))

    def dalpha(self, t: TimeLike) -> Tensor:
        return -0.5 * self.beta(t) * self.alpha(t)


class VPSDE(_BetaIntegral):
    """Variance preserving: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw  (the continuous DDPM).

    Marginal: alpha = exp(-B(t)/2), sigma^2 = 1 - exp(-B(t)).
    """

    def sigma(self, t: TimeLike) -> Tensor:
        return (-torch.expm1(-self.beta_integral(t))).sqrt()

    def dsigma(self, t: TimeLike) -> Tensor:
        return 0.5 * self.beta(t) * torch.exp(-self.beta_integral(t)) / self.sigma(t)

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        return -0.5 * self.beta(t), self.beta(t)


class SubVPSDE(_BetaIntegral):
    """Sub-VP: dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw.

    Marginal: alpha = exp(-B(t)/2), sigma = 1 - exp(-B(t)) (its variance is below VP's).
    """

    def sigma(self, t: TimeLike) -> Tensor:
        return -torch.expm1(-self.beta_integral(t))

    def dsigma(self, t: TimeLike) -> Tensor:
        return self.beta(t) * torch.exp(-self.beta_integral(t))

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        return -0.5 * self.beta(t), self.beta(t) * -torch.expm1(-2 * self.beta_integral(t))


class VESDE(GaussianProcess):
    """Variance exploding (NCSN / SMLD): dx = sqrt(d sigma^2/dt) dw with
    sigma(t) = sigma_min (sigma_max/sigma_min)^t, so g = sigma(t) sqrt(2 log(sigma_max/sigma_min)).

    alpha = 1.  Note sigma(0) = sigma_min > 0: the least noisy level is not clean data, so
    samplers finish with a denoising jump (Tweedie's formula), as NCSN v2 does.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = 0.0, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(as_time(t))

    def dalpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(as_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def dsigma(self, t: TimeLike) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        s = self.sigma(t)
        return torch.zeros_like(s), 2 * self._log_ratio * s**2

    def t_from_edm_sigma(self, s: TimeLike) -> Tensor:
        return (torch.log(as_time(s) / self.sigma_min) / self._log_ratio).clamp(self.t_min, self.t_max)


class NoiseLevels(VESDE):
    """NCSN's L geometric noise levels (Song & Ermon 2019): sigma_i = sigma_min (sigma_max /
    sigma_min)^(i / (L - 1)) for integer i = 0..L-1 (0 the least noise), alpha = 1.

    A discrete process (`discrete = True`, `T = L`): training draws a level uniformly, and
    annealed Langevin sampling visits each level from the top (the `trailing` grid of L
    steps is every level).  Between integers it is the VE SDE with time rescaled, so the
    continuous samplers and the probability-flow likelihood still apply."""

    discrete = True

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 1.0, levels: int = 10):
        super().__init__(sigma_min, sigma_max)
        if levels < 2:
            raise ValueError(f"NoiseLevels needs at least 2 levels, got {levels}")
        self.T = levels
        self.t_max = float(levels - 1)
        self._log_ratio /= levels - 1  # sigma(t) = sigma_min exp(t log(ratio) / (L - 1))

    def sigmas(self) -> Tensor:
        """The L noise levels, largest first (the order they are sampled in)."""
        return self.sigma(torch.arange(self.T - 1, -1, -1, dtype=torch.float64))
