"""Latent diffusion (Rombach et al. 2022): diffuse in the latent space of a trained, frozen
autoencoder instead of in pixels.

    images x --encoder--> latents z (f times smaller per side) --x scale--> the diffusion's data
    samples  <--decoder-- z / scale <-- any sampler, any guidance, in latent space

`FirstStage(autoencoder)` is the frozen network of an autoencoder run (its EMA weights),
which the trainer and the loader load as the run's reference "first_stage".  The training
images are encoded once, to the moments of a KL autoencoder's posterior (mean and std) or
a VQ autoencoder's quantised codes; every training step then draws a fresh posterior
sample mean + std * eps for its examples, as LDM's `get_first_stage_encoding` does, with
eps from the run's noise generator (so the run resumes exactly).  The latents are
multiplied by the autoencoder's scale factor, 1 / std of its latents measured on the
training data when it was saved (LDM's scale_by_std; Stable Diffusion's 0.18215 was
computed the same way), so the diffusion sees data of unit variance, as its noise schedule
assumes.  Decoding divides by the scale, snaps a VQ latent to its nearest codes (LDM's
decoder does the same) and runs the decoder.

A diffusion run with `autoencoder=RUN_DIR` keeps everything else: samplers, guidance, text
conditioning and checkpoints work unchanged on the latent array; `hirune sample` and
`hirune eval` decode before writing or scoring images.  The run keeps a copy of its first
stage's weights (`references/first_stage.safetensors`), so it samples after the
autoencoder's own directory is gone.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FirstStage:
    """A trained autoencoder run, frozen: encode images to scaled latents and back.

    autoencoder: the run, loaded (`training.loading.load`: its EMA weights and the latent
    statistics of its checkpoint)."""

    def __init__(self, autoencoder, device: torch.device | str = "cpu"):
        if getattr(autoencoder, "name", None) != "autoencoder":
            raise ValueError(f"the first stage of latent diffusion must be an autoencoder run "
                             f"(family 'autoencoder', e.g. the preset kl-ae-mnist5k), not a {autoencoder.name} run")
        if autoencoder.cfg.model == "dvae":
            raise ValueError("a dvae run is an image tokenizer (for a transformer over its codes), not a first "
                             "stage of latent diffusion; valid: a kl_autoencoder or vq_autoencoder run")
        if not autoencoder.latent_stats:
            raise ValueError("the autoencoder run has no latent statistics (scale factor); re-save it with this "
                             "version")
        self.dataset = autoencoder.data.name
        self.model = autoencoder.model.to(device).eval().requires_grad_(False)
        self.scale = float(autoencoder.latent_stats["scale_factor"])
        self.is_vq = hasattr(self.model, "quantizer")

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        return self.model.latent_shape(image_shape)

    @property
    def stochastic(self) -> bool:
        """KL autoencoders have a posterior to sample; VQ codes are deterministic."""
        return not self.is_vq

    @torch.no_grad()
    def moments(self, images: Tensor, batch: int = 256) -> Tensor:
        """images (N, C, H, W) in [-1, 1] -> the scaled posterior (N, 2 z, h, w): mean and std
        stacked on the channels (KL), or the scaled codes (N, z, h, w) (VQ); float32."""
        device = next(self.model.parameters()).device
        out = []
        for chunk in images.split(batch):
            z = self.model.encode(chunk.to(device))
            out.append(torch.cat([z.mean, z.std], 1) if self.stochastic else z)
        return torch.cat(out).float() * self.scale

    def sample(self, moments: Tensor, noise: Tensor | None) -> Tensor:
        """Latents from `moments`: mean + std * noise (KL; noise None: the mean) or the codes."""
        if not self.stochastic:
            return moments
        mean, std = moments.chunk(2, dim=1)
        return mean if noise is None else mean + std * noise

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """images -> scaled latents (N, z, h, w): a posterior sample (the mean without a
        generator) or the codes."""
        m = self.moments(images)
        noise = None
        if generator is not None and self.stochastic:
            noise = torch.randn((len(m), m.shape[1] // 2, *m.shape[2:]), generator=generator, device=m.device)
        return self.sample(m, noise)

    @torch.no_grad()
    def decode(self, latents: Tensor, batch: int = 256) -> Tensor:
        """scaled latents (N, z, h, w) -> images (N, C, H, W), clamped to [-1, 1]."""
        device = next(self.model.parameters()).device
        out = []
        for chunk in latents.split(batch):
            z = chunk.to(device).float() / self.scale
            if self.is_vq:
                z = self.model.quantizer(z).z_q
            out.append(self.model.decode(z).clamp(-1, 1))
        return torch.cat(out)
