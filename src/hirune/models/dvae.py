"""DALL-E's discrete VAE (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", sec. 2.1
and appendix A): an image tokenizer trained through the Gumbel-softmax relaxation.

    x (B, C, H, W) -> Encoder -> 1x1 conv -> logits (B, K, h, w) of q(z | x) at each position
      training:   y = gumbel_softmax(logits, tau)  (B, K, h, w), a relaxed one-hot
                  (straight-through: its one-hot forward)
      evaluation: y = one_hot(argmax logits)       the hard code
    z = sum_k y_k e_k (B, D, h, w), the mixture of codebook vectors -> 1x1 conv -> Decoder -> x_hat

The encoder and decoder are the KL / VQ autoencoders' (`autoencoder.py`) with the encoder
giving K logits instead of a latent; the codebook is an embedding table e (K, D), D =
z_channels (DALL-E's decoder starts with a 1x1 conv over the K one-hot channels, the same
map).  The prior of the codes is uniform; the training loss (`objectives/dvae.py`) is the
reconstruction error plus beta * KL(q(z | x) || U(K)) per position, beta warmed up from 0
and tau annealed exponentially, both functions of the optimizer step whose settings live
here (as the KL and VQ weights do in theirs) so that a checkpoint says how it was trained.

Token protocol (shared with the VQ autoencoder and the transformer over image tokens):
`num_codes`, `encode_codes(x) -> (B, h, w)` int64 argmax codes, `decode_codes(codes) -> x_hat`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .autoencoder import AutoencoderConfig, AutoencoderOutput, _Autoencoder
from .gumbel import gumbel_noise, gumbel_softmax, hard_one_hot


def _refuse(key: str, value, valid: str) -> ValueError:
    return ValueError(f"DVAEConfig.{key}={value!r} is not valid; valid: {valid}")


@dataclass(frozen=True)
class DVAEConfig(AutoencoderConfig):
    """codebook_size K codes of z_channels dimensions.  Training loss (`objectives/dvae.py`):
    kl_weight beta of the KL to the uniform prior in nats per position (mean over the h x w
    positions) against the per-pixel reconstruction error, warmed up linearly from 0 over
    kl_warmup optimizer steps (0: from the start); the Gumbel-softmax temperature tau goes
    exponentially from tau_start to tau_end over tau_anneal_steps steps (0: tau_end
    throughout) and stays there (DALL-E: 1 to 1/16); straight_through: the hard variant
    (one-hot forward, relaxed gradient).  The adversarial loss is not wired for the dVAE:
    disc_weight must be 0."""

    z_channels: int = 4
    codebook_size: int = 512
    kl_weight: float = 1e-3
    kl_warmup: int = 100
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_anneal_steps: int = 1000
    straight_through: bool = False

    def __post_init__(self):
        super().__post_init__()
        checks = {
            "codebook_size": (self.codebook_size >= 2, "an integer >= 2"),
            "kl_weight": (math.isfinite(self.kl_weight) and self.kl_weight >= 0, "a finite number >= 0"),
            "kl_warmup": (self.kl_warmup >= 0, "an integer >= 0 (0: the full weight from the start)"),
            "tau_start": (math.isfinite(self.tau_start) and self.tau_start > 0, "a finite number > 0"),
            "tau_end": (math.isfinite(self.tau_end) and 0 < self.tau_end <= self.tau_start,
                        f"a number in (0, tau_start={self.tau_start}] (the temperature is annealed down)"),
            "tau_anneal_steps": (self.tau_anneal_steps >= 0, "an integer >= 0 (0: tau_end throughout)"),
            "disc_weight": (self.disc_weight == 0, "0 (the adversarial loss is not wired for the dVAE)"),
        }
        for key, (ok, valid) in checks.items():
            if not ok:
                raise _refuse(key, getattr(self, key), valid)


@dataclass
class DVAEOutput(AutoencoderOutput):
    logits: Tensor | None = None    # (B, K, h, w) of q(z | x)
    codes: Tensor | None = None     # (B, h, w) int64, argmax of the logits


class DVAE(_Autoencoder):
    """DALL-E's discrete VAE; see the module docstring."""

    def __init__(self, config: DVAEConfig):
        super().__init__(config, config.codebook_size)
        self.codebook = nn.Embedding(config.codebook_size, config.z_channels)

    @property
    def num_codes(self) -> int:
        return self.config.codebook_size

    def logits_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(K, H / f, W / f) for images (C, H, W): the shape of one image's logits (and of its
        Gumbel noise)."""
        _, h, w = self.latent_shape(image_shape)
        return self.num_codes, h, w

    def logits(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> logits (B, K, h, w) of q(z | x)."""
        return self._encoder_moments(x)

    def embed(self, one_hot: Tensor) -> Tensor:
        """(relaxed) one-hots (B, K, h, w) -> the mixture of codes sum_k y_k e_k (B, D, h, w)."""
        return torch.einsum("bkhw,kd->bdhw", one_hot, self.codebook.weight.to(one_hot.dtype))

    def forward(self, x: Tensor, noise: Tensor | None = None, sample: bool = True, tau: float = 1.0,
                generator: torch.Generator | None = None) -> DVAEOutput:
        """Reconstruct x.  In training mode with sample=True through the Gumbel-softmax sample
        at temperature tau (noise: its Gumbel draws (B, K, h, w), drawn when not given);
        otherwise (evaluation, or sample=False) through the hard argmax code."""
        logits = self.logits(x)
        if self.training and sample:
            if noise is None:
                noise = gumbel_noise(logits.shape, generator, logits.device)
            y = gumbel_softmax(logits, tau, noise, hard=self.config.straight_through)
        else:
            y = hard_one_hot(logits)
        z = self.embed(y)
        return DVAEOutput(self.decode(z), z, None, None, logits=logits, codes=logits.argmax(1))

    # --- the token protocol ---------------------------------------------------------
    def encode_codes(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> the argmax codes (B, h, w) int64."""
        return self.logits(x).argmax(1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """codes (B, h, w) int64 in [0, K) -> x_hat (B, C, f h, f w)."""
        if codes.dtype != torch.long or codes.dim() != 3:
            raise ValueError(f"codes of dtype {codes.dtype} and shape {tuple(codes.shape)} are not valid; "
                             "valid: an int64 tensor (B, h, w)")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(f"codes in [{int(codes.min())}, {int(codes.max())}] are not valid; "
                             f"valid: 0 ... {self.num_codes - 1} (codebook_size {self.num_codes})")
        return self.decode(self.codebook(codes).permute(0, 3, 1, 2))

    def encode(self, x: Tensor) -> Tensor:
        """The latent of the hard codes, e_k (B, D, h, w) (as the VQ autoencoder's z_q)."""
        return self.codebook(self.encode_codes(x)).permute(0, 3, 1, 2)
