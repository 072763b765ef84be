"""Latent diffusion (Rombach et al. 2022): diffuse in the latent space of a trained, frozen
autoencoder instead of in pixels.

    images x --encoder--> latents z (f times smaller per side) --x scale--> the diffusion's data
    samples  <--decoder-- z / scale <-- any sampler, any guidance, in latent space

`FirstStage(run_dir)` is the frozen autoencoder of an `objective=autoencoder` run (its EMA
weights).  The training images are encoded once, to the moments of a KL autoencoder's
posterior (mean and std) or a VQ autoencoder's quantised codes; every training step then
draws a fresh posterior sample mean + std * eps for its examples, as LDM's
`get_first_stage_encoding` does, with eps from the run's noise generator (so the run
resumes exactly).  The latents are multiplied by
the autoencoder's scale factor, 1 / std of its latents measured on the training data when
it was saved (LDM's scale_by_std; Stable Diffusion's 0.18215 was computed the same way),
so the diffusion sees data of unit variance, as its noise schedule assumes.  Decoding
divides by the scale, snaps a VQ latent to its nearest codes (LDM's decoder does the same)
and runs the decoder.

A run trained with `autoencoder=RUN_DIR` keeps everything else: samplers, guidance,
text conditioning and checkpoints work unchanged on the latent array; `hirune sample` and
`hirune eval` decode before writing or scoring images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


class FirstStage:
    """A trained autoencoder run, frozen: encode images to scaled latents and back."""

    def __init__(self, run_dir: str | Path, device: torch.device | str = "cpu"):
        from .trainer import load_run

        if not str(run_dir):
            raise ValueError("latent diffusion needs a trained autoencoder run (autoencoder=RUN_DIR)")
        if not Path(run_dir).exists():
            raise FileNotFoundError(f"autoencoder run {run_dir} does not exist; train one first, e.g. "
                                    "`hirune train kl-ae-mnist5k`, then pass autoencoder=runs/kl-ae-mnist5k")
        run = load_run(run_dir)
        if not getattr(run, "is_autoencoder", False):
            raise ValueError(f"{run_dir} is a {run.cfg.objective} run, not an autoencoder "
                             "(objective=autoencoder, e.g. the preset kl-ae-mnist5k)")
        if not run.latent_stats:
            raise ValueError(f"{run_dir} has no latent statistics (scale factor); re-save it with this version")
        self.run_dir, self.dataset = str(run_dir), run.cfg.dataset
        self.model = run.model.to(device).eval().requires_grad_(False)
        self.scale = float(run.latent_stats["scale_factor"])
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
