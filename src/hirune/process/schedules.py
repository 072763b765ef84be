"""Discrete variance-preserving noise schedules (DDPM, Improved DDPM, latent diffusion).

A schedule is a vector of T betas; `DiscreteVP` turns it into a forward process.  Timesteps
use the code convention shared with the reference implementations: t = 0, ..., T-1, where
alphas_cumprod[t] = prod_{i <= t} (1 - betas[i]) is the signal level after t + 1 noising
steps (the paper's x_{t+1}).  The data itself sits at t = -1 (alphas_cumprod = 1).

Between integer steps the process is extended continuously by linear interpolation of
alpha = sqrt(alphas_cumprod), so that ODE samplers and Karras noise levels can visit
fractional times; at integer times it is exactly the discrete schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import GaussianProcess, TimeLike, as_time


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM (Ho et al. 2020, sec. 4): betas linear from 1e-4 to 0.02 over T = 1000 steps."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Latent diffusion / Stable Diffusion: sqrt(beta) linear, then squared."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17):
    alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), and
    beta_t = 1 - alpha_bar(t+1)/alpha_bar(t), clipped at 0.999 to avoid the singularity at T.
    """
    i = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Sigmoid betas (GeoDiff, Xu et al. 2022; diffusers' "sigmoid"): sigmoid over [-6, 6]
    rescaled to [beta_start, beta_end]."""
    x = torch.linspace(-6, 6, T, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "scaled_linear": scaled_linear_betas,
    "sigmoid": sigmoid_betas,
}


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2023 ("Common diffusion noise schedules are flawed", Alg. 1): shift and
    scale sqrt(alpha_bar) so that the last step has zero SNR (pure noise) and the first is
    unchanged, then recover the betas.  The last beta becomes exactly 1."""
    alpha_bar_sqrt = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = alpha_bar_sqrt[0].clone(), alpha_bar_sqrt[-1].clone()
    alpha_bar_sqrt = (alpha_bar_sqrt - last) * first / (first - last)
    alpha_bar = alpha_bar_sqrt**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def shift_snr(betas: Tensor, shift: float) -> Tensor:
    """The SNR shift of SD3 (Esser et al. 2024, sec. 5.3.2) as CogVideoX applies it to a
    discrete schedule (Yang et al. 2024, sec. 3.3): every SNR divided by `shift`,
    alpha_bar' = alpha_bar / (shift + (1 - shift) alpha_bar), so that alpha_bar' / (1 -
    alpha_bar') = SNR / shift.  shift > 1 spends more of the steps at high noise, which
    larger inputs (videos, high resolution) need: the same noise destroys less of a signal
    with more, redundant, pixels.  Returns the betas of the shifted schedule."""
    if not shift > 0:
        raise ValueError(f"snr_shift={shift} is not valid; valid: a number > 0 (1: no shift)")
    alpha_bar = torch.cumprod(1 - betas.double(), 0)
    alpha_bar = alpha_bar / (shift + (1 - shift) * alpha_bar)
    return 1 - torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])


def make_betas(name: str, T: int = 1000, zero_terminal_snr: bool = False, snr_shift: float = 1.0,
               **kwargs) -> Tensor:
    """Betas of a named schedule (see `BETA_SCHEDULES`), its SNR divided by `snr_shift`
    (`shift_snr`), then rescaled to zero terminal SNR if asked (the order of CogVideoX)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {sorted(BETA_SCHEDULES)}")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"number of timesteps T must be an integer >= 2, got {T!r}")
    betas = BETA_SCHEDULES[name](T, **kwargs)
    if snr_shift != 1.0:
        betas = shift_snr(betas, snr_shift)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


class DiscreteVP(GaussianProcess):
    """The DDPM forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

    Build from a name (`DiscreteVP("cosine")`) or explicit betas (`DiscreteVP(betas=...)`).
    Attributes use the papers' names: betas, alphas, alphas_cumprod, alphas_cumprod_prev,
    posterior_variance (beta tilde), all float64 of length T.
    """

    discrete = True

    def __init__(
        self, schedule: str = "linear", T: int = 1000, *, zero_terminal_snr: bool = False,
        snr_shift: float = 1.0, betas: Tensor | None = None, **schedule_kwargs,
    ):
        if betas is None:
            betas = make_betas(schedule, T, zero_terminal_snr, snr_shift, **schedule_kwargs)
        else:
            schedule = "custom"
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.schedule, self.T = schedule, len(betas)
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        # beta tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (DDPM eq. 7)
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # alpha at the interpolation nodes t = -1, 0, ..., T-1 (t = -1 is the data).
        self._nodes = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod.sqrt()])
        self.t_min, self.t_max = 0.0, float(self.T - 1)

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    def _segment(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        u = as_time(t).clamp(-1, self.T - 1) + 1  # position among the nodes
        i = u.floor().long().clamp(max=self.T - 1)
        return i, u - i

    def alpha(self, t: TimeLike) -> Tensor:
        i, frac = self._segment(t)
        a0, a1 = self._nodes[i], self._nodes[i + 1]
        return a0 + frac * (a1 - a0)

    def dalpha(self, t: TimeLike) -> Tensor:
        i, _ = self._segment(t)
        return self._nodes[i + 1] - self._nodes[i]

    def sigma(self, t: TimeLike) -> Tensor:
        return (1 - self.alpha(t) ** 2).clamp(min=0).sqrt()

    def dsigma(self, t: TimeLike) -> Tensor:
        # sigma^2 = 1 - alpha^2  =>  sigma' = -alpha alpha' / sigma
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def coefficients64(self, t: TimeLike) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i, frac = self._segment(t)
        a0, a1 = self._nodes[i], self._nodes[i + 1]
        alpha, dalpha = a0 + frac * (a1 - a0), a1 - a0
        sigma = (1 - alpha**2).clamp(min=0).sqrt()
        return alpha, sigma, dalpha, -alpha * dalpha / sigma

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """DDPM eq. 7 at integer timesteps t (B,): mean and beta tilde of q(x_{t-1} | x_t, x_0).

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
             + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        """
        t = torch.as_tensor(t, dtype=torch.long, device=x0.device).cpu()
        view = lambda a: a[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0)  # noqa: E731
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        coef_x0 = view(ab_prev.sqrt() * self.betas / (1 - ab))
        coef_xt = view(self.alphas.sqrt() * (1 - ab_prev) / (1 - ab))
        return coef_x0 * x0 + coef_xt * x_t, view(self.posterior_variance)

    def __repr__(self) -> str:
        ztsnr = ", zero_terminal_snr" if self.zero_terminal_snr else ""
        return f"DiscreteVP({self.schedule!r}, T={self.T}{ztsnr})"
