"""Gaussian mixtures: data whose noisy marginals, scores and denoisers are exact.

If x_0 ~ sum_k w_k N(mu_k, diag(s_k^2)), then under x_t = alpha x_0 + sigma eps every marginal
is again a mixture, p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)), and the
posterior means E[x_0 | x_t], E[eps | x_t] are responsibility-weighted per-component Gaussian
posteriors.  This is the ground truth that every sampler is tested against, and the exact
model behind `hirune demo`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import Denoiser
from .parameterization import from_x0_eps
from .base import GaussianProcess, TimeLike


class GaussianMixture:
    """means (K, D), stds (K,) or (K, D), weights (K,) summing to 1."""

    def __init__(self, means, stds, weights=None, dtype: torch.dtype = torch.float64):
        self.means = torch.as_tensor(means, dtype=dtype)
        K, D = self.means.shape
        stds = torch.as_tensor(stds, dtype=dtype)
        self.stds = stds[:, None].expand(K, D).clone() if stds.ndim == 1 else stds
        w = torch.full((K,), 1 / K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        if self.stds.shape != (K, D) or w.shape != (K,) or (self.stds <= 0).any():
            raise ValueError("need means (K, D), positive stds (K,) or (K, D), weights (K,)")
        if (w < 0).any() or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must be non-negative and sum to 1, got {w.tolist()}")
        self.weights = w

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_labels: bool = False):
        k = (torch.multinomial(self.weights, n, replacement=True, generator=generator) if n > 0
             else torch.zeros(0, dtype=torch.long))
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        x = self.means[k] + self.stds[k] * z
        return (x, k) if return_labels else x

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component mean, variance at time t and log-responsibility logits: (B, K, D)."""
        m = alpha[:, None] * self.means.to(x)            # (B|1, K, D)
        var = alpha[:, None] ** 2 * self.stds.to(x) ** 2 + sigma[:, None] ** 2
        diff = x[:, None, :] - m
        log_n = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return diff, var, torch.log(self.weights.to(x)) + log_n

    def _coeffs(self, process: GaussianProcess, t: TimeLike, x: Tensor):
        c = process.coefficients(t, x)
        return c, c.alpha.reshape(-1, 1), c.sigma.reshape(-1, 1)

    def log_prob(self, x: Tensor, process: GaussianProcess | None = None, t: TimeLike = 0.0) -> Tensor:
        """log p_t(x) for x (B, D); without a process, the data density log p_0."""
        if process is None:
            ones = torch.ones(1, 1, dtype=x.dtype)
            return torch.logsumexp(self._components(x, ones, 0 * ones)[2], dim=1)
        _, alpha, sigma = self._coeffs(process, t, x)
        return torch.logsumexp(self._components(x, alpha, sigma)[2], dim=1)

    def posterior_means(self, x: Tensor, process: GaussianProcess, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Exact E[x_0 | x_t = x] and E[eps | x_t = x], each (B, D)."""
        _, alpha, sigma = self._coeffs(process, t, x)
        diff, var, logits = self._components(x, alpha, sigma)
        r = torch.softmax(logits, dim=1)[..., None]                  # (B, K, 1)
        s2 = self.stds.to(x) ** 2
        x0 = (r * (self.means.to(x) + alpha[:, None] * s2 / var * diff)).sum(1)
        eps = (r * (sigma[:, None] / var * diff)).sum(1)
        return x0, eps

    def score(self, x: Tensor, process: GaussianProcess, t: TimeLike) -> Tensor:
        _, alpha, sigma = self._coeffs(process, t, x)
        diff, var, logits = self._components(x, alpha, sigma)
        r = torch.softmax(logits, dim=1)[..., None]
        return -(r * diff / var).sum(1)

    def classify(self, x: Tensor) -> Tensor:
        """Most likely component of each clean sample, (B,)."""
        ones = torch.ones(1, 1, dtype=x.dtype)
        return self._components(x, ones, 0 * ones)[2].argmax(1)

    def model(self, process: GaussianProcess, prediction: str):
        """A 'network' that returns the exact `prediction` for (x, t) on `process`."""
        def exact(x: Tensor, t: Tensor) -> Tensor:
            t = _one_time(t)
            x0, eps = self.posterior_means(x, process, t)
            return from_x0_eps(prediction, x0, eps, process.coefficients(t, x))
        return exact

    def denoiser(self, process: GaussianProcess, prediction: str = "eps") -> Denoiser:
        """The exact denoiser of this mixture, presented as a `prediction` model."""
        return Denoiser(self.model(process, prediction), process, prediction)

    # --- the components as class labels: exact conditional models and noisy classifiers

    def component(self, k: int) -> GaussianMixture:
        """Component k alone: the class-conditional data distribution p(x_0 | y = k)."""
        return GaussianMixture(self.means[k:k + 1], self.stds[k:k + 1], [1.0], dtype=self.means.dtype)

    def class_log_probs(self, x: Tensor, process: GaussianProcess, t: TimeLike) -> Tensor:
        """Exact log p(y = k | x_t = x), (B, K): the log-responsibilities at time t."""
        _, alpha, sigma = self._coeffs(process, t, x)
        return torch.log_softmax(self._components(x, alpha, sigma)[2], dim=1)

    def noisy_classifier(self, process: GaussianProcess):
        """The exact noise-aware classifier `classifier(x_t, t) -> logits (B, K)`."""
        def classifier(x: Tensor, t: Tensor) -> Tensor:
            return self.class_log_probs(x, process, _one_time(t))
        return classifier

    def conditional_model(self, process: GaussianProcess, prediction: str):
        """A class-conditional 'network' `model(x, t, y=None)`: the exact prediction of
        component y, or of the whole mixture where y is None or the null label K."""
        full = self.model(process, prediction)
        parts = [self.component(k).model(process, prediction) for k in range(len(self.weights))]

        def exact(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
            out = full(x, t)
            if y is None:
                return out
            t = t.expand(len(x)) if t.ndim == 0 else t
            for k, part in enumerate(parts):
                mask = y == k
                if mask.any():
                    out[mask] = part(x[mask], t[mask])
            return out
        return exact

    def conditional_denoiser(self, process: GaussianProcess, prediction: str = "eps") -> Denoiser:
        """The exact class-conditional denoiser (null label: K = number of components)."""
        return Denoiser(self.conditional_model(process, prediction), process, prediction)


def _one_time(t: Tensor) -> Tensor:
    """float64 times; a batch that shares one time becomes a scalar (one coefficient lookup)."""
    t = t.to(torch.float64)
    return t[0] if t.ndim == 1 and bool((t == t[0]).all()) else t


def demo_mixture() -> GaussianMixture:
    """A 2-D mixture with unequal weights and widths, used by tests and `hirune demo`."""
    return GaussianMixture(
        means=[[-2.5, -1.0], [2.5, -1.0], [0.0, 2.5]],
        stds=[0.45, 0.6, 0.35],
        weights=[0.5, 0.3, 0.2],
    )
