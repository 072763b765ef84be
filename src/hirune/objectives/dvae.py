"""The training loss of DALL-E's discrete VAE (Ramesh et al. 2021, sec. 2.1, appendix A.2)
and its two schedules, pure functions of the optimizer step (so a resumed run is exact).

    loss = rec + perceptual_weight * d_perc + beta(step) * mean_positions KL(q(z | x) || U(K))

rec is the L1 / L2 error per pixel of the reconstruction through the Gumbel-softmax sample
at temperature tau(step) (`models/gumbel.py`); the KL to the uniform prior is log K - H(q)
nats at each of the h x w positions, averaged over them.  DALL-E maximises the ELB with
beta = 6.6 on sums over 256^2 x 3 pixels and 32^2 positions; here both terms are per
element, so beta is on another scale (see the presets).

    beta(s) = kl_weight * min(s / kl_warmup, 1)                               linear warm-up
    tau(s)  = tau_start * (tau_end / tau_start) ^ min(s / tau_anneal_steps, 1)   exponential

DALL-E: beta from 0 to 6.6 over the first 5000 updates, tau from 1 to 1/16 over the first
150 000.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autoencoder import reconstruction_terms
from .loss import Loss


def kl_weight_at(step: int, kl_weight: float, kl_warmup: int) -> float:
    """beta at optimizer step `step`: 0 at step 0, kl_weight from step kl_warmup on (linear
    in between; kl_warmup 0: kl_weight throughout)."""
    if kl_warmup <= 0:
        return float(kl_weight)
    return float(kl_weight) * min(step / kl_warmup, 1.0)


def temperature_at(step: int, tau_start: float, tau_end: float, tau_anneal_steps: int) -> float:
    """tau at optimizer step `step`: tau_start at 0, geometric to tau_end at tau_anneal_steps,
    tau_end after (tau_anneal_steps 0: tau_end throughout)."""
    if tau_anneal_steps <= 0:
        return float(tau_end)
    fraction = min(step / tau_anneal_steps, 1.0)
    return float(tau_start) * (float(tau_end) / float(tau_start)) ** fraction


def dvae_loss(model, x: Tensor, config, step: int, *, noise: Tensor | None = None,
              dataset: str | None = None) -> Loss:
    """The loss of a dVAE `model(x, noise, tau) -> DVAEOutput` at optimizer step `step`, with
    the weights and schedules of its `config` (`models.dvae.DVAEConfig`); noise: the Gumbel
    draws (B, K, h, w).  Terms: reconstruction, perceptual, kl (nats per position), tau,
    kl_weight (beta), and the hard codes' usage and perplexity in this micro-batch."""
    from ..models.gumbel import kl_to_uniform
    from ..models.quantize import perplexity

    tau = temperature_at(step, config.tau_start, config.tau_end, config.tau_anneal_steps)
    beta = kl_weight_at(step, config.kl_weight, config.kl_warmup)
    out = model(x, noise=noise, tau=tau)
    per_sample, terms = reconstruction_terms(x, out.reconstruction, config, dataset)
    kl = kl_to_uniform(out.logits).flatten(1).mean(1)   # (B,) nats per position
    per_sample = per_sample + beta * kl
    K = config.codebook_size
    codes = out.codes.flatten()
    terms.update(kl=kl.mean().detach(), tau=tau, kl_weight=beta,
                 perplexity=perplexity(codes, K).float(),
                 usage=(torch.bincount(codes, minlength=K) > 0).float().mean())
    return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(x), device=x.device), terms,
                reconstruction=out.reconstruction)
