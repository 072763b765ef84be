"""The first stage of latent diffusion: the training loss of an autoencoder and the scale
of its latents (Rombach et al. 2022, "LDM", sec. 3.1, appendix G).

    loss = rec + perceptual_weight * d_perc                           (per pixel)
           + kl_weight * KL(q(z | x) || N(0, I)) / D                  KL autoencoders
           + codebook + beta * commitment                             VQ autoencoders (VQ-VAE eq. 3)

rec is the L1 (LDM) or L2 error per pixel; D the pixels of one image (C H W).  LDM sums
the reconstruction error over the pixels of an image and adds kl_weight times the KL in
nats; dividing both by D keeps LDM's meaning of kl_weight while the loss reads as a
per-pixel error whatever the image size (and gradient clipping sees the same scale).
The codebook and commitment losses are mean squared distances per latent element, as in
VQ-VAE and taming-transformers.

Perceptual loss.  LPIPS (Zhang et al. 2018) needs downloaded network weights.  The
stand-in is LPIPS's form with the unit weights of its "baseline" variant on the shipped
evaluator CNN (`hirune.metrics.evaluator`): sum over its three conv stages of the mean squared
difference of channel-normalised activations.  Off by default: the same network scores
the Frechet distance of every digit model, and a first stage trained on its features
would flatter the latent diffusion models built on it.

Adversarial loss (optional, off by default: disc_weight = 0).  VQGAN (Esser et al. 2021,
sec. 3.1) and LDM (appendix G) add a patch discriminator D (`models/discriminator.py`)
from optimizer step `disc_start` on (50 001 for LDM's KL-f8):

    generator:      loss += lambda * g_loss,     g_loss = -mean D(x_hat)
                    lambda = disc_weight * ||grad_{G_L} L_rec|| / (||grad_{G_L} g_loss|| + 1e-4)   (eq. 7)
    discriminator:  hinge:   1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
                    vanilla: 1/2 (mean softplus(-D(x)) + mean softplus(D(x_hat)))

G_L is the decoder's last layer (`model.last_layer()`), L_rec taming's nll: the
reconstruction (+ perceptual) loss; the KL and VQ terms do not reach G_L, so it is also
the gradient of the whole non-adversarial loss there.  lambda balances the two gradients
where they meet the image, is clamped to [0, 1e4] and is a constant for backpropagation.
D is a fixed function inside the generator's loss (its parameters get no gradient), and
its own step sees the reconstructions detached.  The trainer runs one D step
(`adversary.Adversary.step`) after each generator step, on the same micro-batches, with
a second AdamW (betas (0.5, 0.9) as taming).  Unlike taming, which re-runs the autoencoder for the
D step after the generator's update, D judges the reconstructions the generator step
already made (one forward fewer; the D step draws no randomness).  Turn it on with, e.g.,
`model_config={..., "disc_weight": 0.5, "disc_start": 300}`.

Latent scale.  The diffusion model of LDM sees z * scale with scale = 1 / std of the
first stage's latents over a training batch (LDM's `scale_by_std`; 0.18215 for Stable
Diffusion's VAE), so that the latents have about unit variance like the data the noise
schedules were designed for.  `latent_statistics` computes it, with per-channel means and
standard deviations.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .loss import Loss


def reconstruction_error(x: Tensor, x_hat: Tensor, kind: str = "l1") -> Tensor:
    """Mean |x - x_hat| ("l1") or (x - x_hat)^2 ("l2") per example: (B,)."""
    diff = (x_hat.float() - x.float()).flatten(1)
    if kind == "l1":
        return diff.abs().mean(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    raise ValueError(f"unknown reconstruction loss {kind!r}; valid: ['l1', 'l2']")


@lru_cache(maxsize=4)
def _feature_net(dataset: str, device: str):
    from ..metrics.evaluator import load_evaluator  # below the objectives: the shipped network

    net = load_evaluator(dataset).to(device)
    net.requires_grad_(False)
    return net


def evaluator_features(net, x: Tensor) -> list[Tensor]:
    """The activations after each of the evaluator's three conv stages (GN, SiLU):
    (B, 32, S, S), (B, 32, S, S), (B, 64, S / 2, S / 2)."""
    out = []
    for i, layer in enumerate(net.conv):
        x = layer(x)
        if i in (2, 5, 9):
            out.append(x)
    return out


def perceptual_distance(x: Tensor, x_hat: Tensor, dataset: str) -> Tensor:
    """LPIPS-style distance in the shipped evaluator's features (see the module docstring):
    sum over stages of the mean over (C, H, W) of (phi(x) / |phi(x)| - phi(x_hat) / |phi(x_hat)|)^2,
    |.| the norm over channels at each pixel.  x, x_hat: (B, 1, S, S) in [-1, 1] -> (B,)."""
    net = _feature_net(dataset, str(x.device))
    total = torch.zeros(len(x), device=x.device)
    for a, b in zip(evaluator_features(net, x.float()), evaluator_features(net, x_hat.float())):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + (a - b).pow(2).flatten(1).mean(1)
    return total


def reconstruction_terms(x: Tensor, x_hat: Tensor, config, dataset: str | None) -> tuple[Tensor, dict]:
    """The reconstruction part of every autoencoder's loss, per sample (B,): the pixel error
    (`config.reconstruction`) plus `config.perceptual_weight` x the perceptual distance in
    the evaluator's features of `dataset`; and its logged terms."""
    rec = reconstruction_error(x, x_hat, config.reconstruction)
    per_sample, terms = rec, {"reconstruction": rec.mean().detach()}
    if config.perceptual_weight:
        if dataset is None:
            raise ValueError("the perceptual loss needs the dataset of its evaluator network")
        d = perceptual_distance(x, x_hat, dataset)
        per_sample = per_sample + config.perceptual_weight * d
        terms["perceptual"] = d.mean().detach()
    return per_sample, terms


def autoencoder_loss(model, x: Tensor, config, *, noise: Tensor | None = None, dataset: str | None = None,
                     discriminator: nn.Module | None = None, last_layer: Tensor | None = None,
                     average: Callable[..., tuple[Tensor, ...]] | None = None) -> Loss:
    """The training loss of a KL or VQ autoencoder `model(x, noise) -> AutoencoderOutput`
    (see the module docstring) with the weights in its `config`; noise: (B, z, h, w), the
    posterior sample's N(0, I) draw (KL).  dataset names the evaluator of the perceptual
    loss.  Terms: reconstruction, perceptual, kl (nats per image) or codebook, commitment,
    perplexity and usage.  The returned Loss carries x_hat (`reconstruction`) for the
    discriminator's step.

    With a `discriminator` (from disc_start on), the generator's adversarial term
    lambda * g_loss is added, lambda the adaptive weight of VQGAN eq. 7 at `last_layer`
    (the decoder's output weight); `average` (several processes) averages its gradients
    over the ranks.  Extra terms: g_loss, adaptive_weight."""
    out = model(x, noise=noise)
    nll, terms = reconstruction_terms(x, out.reconstruction, config, dataset)
    per_sample = nll
    if out.posterior is not None:
        kl = out.posterior.kl().float()
        per_sample = per_sample + config.kl_weight * kl / x[0].numel()
        terms["kl"] = kl.mean().detach()
    if out.quantized is not None:
        q = out.quantized
        per_sample = per_sample + q.codebook_loss.float() + config.beta * q.commitment_loss.float()
        terms.update(codebook=q.codebook_loss.mean().detach(), commitment=q.commitment_loss.mean().detach(),
                     perplexity=q.perplexity.detach(), usage=q.usage.detach())
    if discriminator is not None:
        if last_layer is None:
            raise ValueError("the adversarial loss needs the decoder's last layer (model.last_layer())")
        with frozen(discriminator):  # a fixed function here: the generator's loss does not train D
            g = -discriminator(out.reconstruction).float().flatten(1).mean(1)   # (B,): -mean D(x_hat) per image
        weight = adaptive_weight(nll.mean(), g.mean(), last_layer, config.disc_weight, average)
        per_sample = per_sample + weight * g
        terms.update(g_loss=g.mean().detach(), adaptive_weight=weight)
    return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(x), device=x.device), terms,
                reconstruction=out.reconstruction)


# --- the adversarial loss (VQGAN sec. 3.1, LDM appendix G) -------------------------------------

def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017; taming's `hinge_d_loss`):
    1/2 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))), means over examples and patches."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The original GAN's discriminator loss (Goodfellow et al. 2014) on logits, i.e. binary
    cross-entropy with real = 1 and fake = 0: 1/2 (mean softplus(-D(x)) + mean softplus(D(x_hat)))."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, disc_weight: float = 1.0,
                    average: Callable[..., tuple[Tensor, ...]] | None = None) -> Tensor:
    """VQGAN's adaptive weight of the adversarial term (Esser et al. 2021, eq. 7):

        lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4)

    with G_L the decoder's last layer, clamped to [0, 1e4] and detached (a constant for
    backpropagation, as in taming), times disc_weight.  Scalar losses in; the graphs are
    kept for the backward pass that follows.  `average(grad_rec, grad_gan)`: on several
    processes, the gradients averaged over the ranks, so that lambda is that of the global
    micro-batch, as on one process."""
    grad_rec, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    grad_gan, = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    if average is not None:
        grad_rec, grad_gan = average(grad_rec, grad_gan)
    ratio = grad_rec.float().norm() / (grad_gan.float().norm() + 1e-4)
    return disc_weight * ratio.clamp(0.0, 1e4).detach()


def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor, kind: str = "hinge"
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """The discriminator's loss (`D_LOSSES[kind]`) on real images and reconstructions, both
    (B, C, H, W), in one forward; returns (loss, mean real logit, mean fake logit).  The
    reconstructions are detached: the discriminator's step must not reach the autoencoder."""
    logits = discriminator(torch.cat([real, fake.detach()])).float()
    logits_real, logits_fake = logits.chunk(2)
    return D_LOSSES[kind](logits_real, logits_fake), logits_real.mean().detach(), logits_fake.mean().detach()


@contextmanager
def frozen(module: nn.Module):
    """`module`'s parameters need no gradient for the duration (their earlier flags are restored)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@torch.no_grad()
def encode_latents(model, images: Tensor, batch: int = 256, generator: torch.Generator | None = None) -> Tensor:
    """The latents the diffusion stage would see, (N, z, h, w) (videos: (N, z, t, h, w)): a posterior sample for KL
    autoencoders (as LDM's `get_first_stage_encoding`), the quantised codes for VQ ones.
    The model is evaluated in eval mode (no codebook update) and put back as it was."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = []
        for chunk in images.split(batch):
            latent = model.encode(chunk.to(device))
            out.append(latent.sample(generator=generator) if hasattr(latent, "sample") else latent)
        return torch.cat(out).float()
    finally:
        model.train(was_training)


def latent_statistics(model, images: Tensor, num_images: int = 1000, seed: int = 0) -> dict:
    """Statistics of the latents of up to `num_images` images or videos (a seeded random subset):
    scale_factor = 1 / std over every latent element (LDM's scale_by_std), the overall
    mean and std, and per-channel means and stds.  Plain numbers, for JSON."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:num_images]
    device = next(model.parameters()).device
    sample_g = torch.Generator(device=device).manual_seed(seed)
    z = encode_latents(model, images[idx], generator=sample_g).double()
    std, others = float(z.std()), (0, *range(2, z.dim()))  # per channel: over examples and (T,) h, w
    return {"scale_factor": 1.0 / std, "std": std, "mean": float(z.mean()),
            "channel_mean": z.mean(others).tolist(), "channel_std": z.std(others).tolist(),
            "latent_shape": list(z.shape[1:]), "num_images": len(z), "seed": seed}


def originals_over_reconstructions(x: Tensor, x_hat: Tensor, per_row: int = 8) -> Tensor:
    """Interleave rows of `per_row` originals with the rows of their reconstructions, for a
    grid of `per_row` columns.  x, x_hat: (N, C, H, W) with N a multiple of per_row.
    Videos (N, C, T, H, W): the T frames of each clip over the T frames of its
    reconstruction, (2 N T, C, H, W) for a grid of T columns."""
    if x.dim() == 5:
        pairs = torch.stack([x, x_hat], 1).transpose(2, 3)   # (N, 2, T, C, H, W)
        return pairs.flatten(0, 2)
    rows = len(x) // per_row
    pairs = torch.stack([x.reshape(rows, per_row, *x.shape[1:]), x_hat.reshape(rows, per_row, *x.shape[1:])], 1)
    return pairs.flatten(0, 2)
