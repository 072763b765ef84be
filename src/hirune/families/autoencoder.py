"""The autoencoder family: the first stage of latent diffusion (LDM's KL autoencoder, VQGAN's
VQ autoencoder), trained to reconstruct with the losses of `objectives.autoencoder` and,
optionally, a patch discriminator (`adversary.py`); and DALL-E's discrete VAE, an image
tokenizer trained through the Gumbel-softmax relaxation with the loss of `objectives.dvae`
(its KL weight warmed up and its temperature annealed as functions of the step); and
CogVideoX's 3D causal VAE (model "video_kl", `models.video_vae`) on video data.  Its
checkpoints carry the latent statistics of their EMA weights (the scale factor latent
diffusion multiplies by); its previews are originals over reconstructions (videos: frame
strips); its evaluation is the reconstruction report (videos: PSNR per frame too).  The
loss weights (and the dVAE's schedules) live in the network's config (`models.autoencoder`,
`models.dvae`, `models.video_vae`), so the family has no section of its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..objectives import Loss
from .base import Batch, Context, Draw, Family, check_eval_counts, refuse_extras, register


@dataclass
class AutoencoderDraw(Draw):
    """noise: a KL autoencoder's posterior sample noise (B, z, h, w) (video_kl: (B, z, t, h, w)),
    a dVAE's Gumbel draws (B, K, h, w); VQ draws nothing."""

    noise: Tensor | None = None


@register
class Autoencoder(Family):
    name = "autoencoder"
    networks = ("kl_autoencoder", "vq_autoencoder", "dvae", "video_kl")
    evaluates_test_examples = True  # the reconstructions of n test images

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        video = cfg.model == "video_kl"  # CogVideoX's VAE: videos, or images as one-frame videos
        if data.kind not in (("video", "image") if video else ("image",)):
            need = "model=video_kl needs videos or images" if video else "an autoencoder needs images"
            raise ValueError(f"{need}; {data.name} holds {data.kind} data")
        shape = {"in_channels": data.shape[0], "image_size": data.shape[-2]}
        if data.kind == "video":
            shape["frames"] = data.shape[1]  # (C, T, H, W)
        self.model = self._build(cfg.model, network_config or {**shape, **cfg.model_config})
        self.latent_stats = None  # `objectives.autoencoder.latent_statistics`, saved with each checkpoint

    def prepare(self, data, context: Context) -> None:
        super().prepare(data, context)
        if self.model.config.disc_weight > 0:  # the adversarial loss: the patch discriminator and its optimizer
            from .adversary import Adversary

            self.adversary = Adversary(self.model.config, self.cfg, context.world, self.device, data.shape[-1],
                                       dtype=context.dtype, autocast=context.autocast,
                                       channels_last=context.channels_last)

    @classmethod
    def check(cls, cfg, config) -> None:
        """The family's checks, then the network's settings (their types and ranges, e.g. a
        dVAE's temperatures and KL warm-up), before anything is built."""
        from ..models import model_config

        super().check(cfg, config)
        try:
            model_config(cfg.model, cfg.model_config)
        except TypeError as e:  # a setting of the wrong type: one line, as every refused setting
            raise ValueError(str(e)) from None

    def draw(self, n: int, generator: torch.Generator) -> AutoencoderDraw:
        if self.cfg.model == "vq_autoencoder":
            return AutoencoderDraw()
        if self.cfg.model == "dvae":
            from ..models.gumbel import gumbel_noise

            shape = (n, *self.model.logits_shape(tuple(self.data.shape)))
            return AutoencoderDraw(gumbel_noise(shape, generator, self.device))
        return AutoencoderDraw(torch.randn((n, *self.model.latent_shape(tuple(self.data.shape))),
                                           generator=generator, device=self.device))

    def loss(self, forward: nn.Module, batch: Batch, draw: AutoencoderDraw, step: int) -> Loss:
        from ..objectives.autoencoder import autoencoder_loss

        if self.cfg.model == "dvae":  # DALL-E: tau and beta are functions of the step
            from ..objectives.dvae import dvae_loss

            return dvae_loss(forward, batch.x, self.model.config, step, noise=draw.noise, dataset=self.data.name)

        adversary = self.active_adversary(step)  # VQGAN's adversarial term with its adaptive weight (eq. 7)
        gan = adversary.generator_kwargs(self.model) if adversary is not None else {}
        return autoencoder_loss(forward, batch.x, self.model.config, noise=draw.noise, dataset=self.data.name, **gan)

    def logged_terms(self, terms: dict) -> dict[str, float]:
        """Reconstruction, KL or codebook perplexity and usage (and the discriminator's); a
        dVAE's KL, temperature tau and KL weight beta of the step, code usage and perplexity."""
        return {k: float(v) for k, v in terms.items()}

    def checkpoint(self, ema):
        """The latent scale of these (EMA) weights, for latent diffusion; the adversary's parts."""
        from ..distributed.strategy import gathered
        from ..objectives.autoencoder import latent_statistics

        with torch.no_grad(), ema.applied(self.model), gathered(self.model):
            self.latent_stats = latent_statistics(self.model, self.train_data.data)
        tensors, state = super().checkpoint(ema)
        return tensors, {"latent_stats": self.latent_stats, **state}

    def restore_loaded(self, state: dict) -> None:
        self.latent_stats = state.get("latent_stats")

    def preview(self, n: int) -> Tensor:
        """Originals over reconstructions, eight per row, spread over the data; videos: a
        strip of frames per clip, each clip's original over its reconstruction (n / 16 clips,
        at least 2)."""
        from ..objectives.autoencoder import originals_over_reconstructions

        data = self.train_data.data
        video = data.dim() == 5
        idx = torch.linspace(0, len(data) - 1, max(2, n // 16) if video else 8 * max(1, n // 16)).long()
        x0 = data[idx].to(self.device)
        return originals_over_reconstructions(x0, self.model(x0, sample=False).reconstruction)

    def write_preview(self, x: Tensor, path, step: int):
        from ..viz import image_grid

        return image_grid(x, path, nrow=self.data.shape[1] if self.data.kind == "video" else 8)

    # --- inference ------------------------------------------------------------------
    def generate(self, n: int, *args, **options):
        raise ValueError("an autoencoder run does not sample; `hirune eval` reports its reconstructions and its "
                         "training run writes reconstruction grids")

    def evaluate(self, n: int | None = None, *, nll: int = 0, text_accuracy: int = 0, denoising_error: int = 0, **unused) -> dict:
        """The reconstructions of n test images (None: all of them; `evaluation.reconstruction`)."""
        from ..evaluation.reconstruction import reconstruction_report

        n = check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        refuse_extras(self, nll, text_accuracy, denoising_error)
        report = reconstruction_report(self.model, self.data.name, n, self.latent_stats)
        return {"step": self.step, "dataset": self.data.name, **report}
