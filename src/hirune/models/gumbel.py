"""The Gumbel-softmax relaxation of a categorical sample (Jang et al. 2017, "Categorical
Reparameterization with Gumbel-Softmax"; Maddison et al. 2017, "The Concrete
Distribution"), as DALL-E's discrete VAE uses it (Ramesh et al. 2021, sec. 2.1).

A categorical q = softmax(l) over K codes is sampled exactly by the Gumbel-max trick,

    k = argmax_j (l_j + g_j),      g_j = -log(-log u_j),  u_j ~ U(0, 1) independent,

which has no gradient.  The relaxation replaces the argmax by a softmax at temperature tau,

    y = softmax((l + g) / tau),

a point of the simplex that tends to the one-hot of k as tau -> 0 and to the uniform
1 / K as tau -> infinity, and is differentiable in l.  The straight-through ("hard")
variant uses the one-hot of k forward and y's gradient backward: one_hot(k) + y - sg(y).

The prior of the codes is uniform, so the KL term of the ELBO per position is

    KL(q || U(K)) = sum_k q_k log(q_k K) = log K - H(q).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_TINY = 1e-20  # u is clamped away from 0 so that -log(-log u) stays finite


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel draws g = -log(-log u), u ~ U(0, 1), of `shape`."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype).clamp_(min=_TINY)
    return -torch.log(-torch.log(u))


def gumbel_softmax(logits: Tensor, tau: float, noise: Tensor, hard: bool = False, dim: int = 1) -> Tensor:
    """The relaxed one-hot sample softmax((logits + noise) / tau) along `dim`; hard=True: the
    one-hot of its argmax forward, the relaxed sample's gradient backward (straight-through).
    logits, noise: the same shape, e.g. (B, K, h, w) with dim=1; tau > 0."""
    if not tau > 0:
        raise ValueError(f"tau={tau!r} is not valid; valid: a temperature > 0")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least
    soft = F.softmax((logits.to(dtype) + noise.to(dtype)) / tau, dim=dim)
    if not hard:
        return soft.to(logits.dtype)
    one_hot = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return (one_hot + (soft - soft.detach())).to(logits.dtype)  # exactly one-hot in value


def hard_one_hot(logits: Tensor, dim: int = 1) -> Tensor:
    """The one-hot of argmax(logits) along `dim` (the code a dVAE uses at evaluation)."""
    return torch.zeros_like(logits).scatter_(dim, logits.argmax(dim, keepdim=True), 1.0)


def kl_to_uniform(logits: Tensor, dim: int = 1) -> Tensor:
    """KL(softmax(logits) || U(K)) = sum_k q_k (log q_k + log K) along `dim`, in nats, computed
    in float32 at least: shape of logits without `dim`."""
    log_q = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=dim)
    K = logits.shape[dim]
    return (log_q.exp() * (log_q + math.log(K))).sum(dim)
