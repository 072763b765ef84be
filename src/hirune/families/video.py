"""The video family: CogVideoX-style text to video (Yang et al. 2024) on the shared core.

A diffusion run whose examples are clips (C, T, H, W) of 4k+1 frames.  With
`autoencoder=RUN` (a video autoencoder, `models.video_vae`: 4x in time, 4x in space) it
denoises the VAE's latents (C', k+1, H/4, W/4); the network is the expert transformer
(`models.cogvideox`: text and video tokens in one sequence, an adaptive LayerNorm per
modality, 3D RoPE).  Everything else is the diffusion family's: the process (CogVideoX's is
`scaled_linear` with the SNR shift and zero terminal SNR, `process.schedules`), the
objective (v prediction), classifier-free guidance on the empty caption, the samplers
(DDIM with trailing spacing), the trainer and every distributed strategy.

What the family adds:
- captions of the clips (`data.video_captions`): the digit, its motion and its look;
- explicit uniform times (`explicit_uniform`, on by default here; `objectives.sample_times`);
- progressive training (`base=RUN`, `families.progressive`): start from a run on the same
  clips at a lower resolution, the positions of the new grid extrapolated or interpolated;
- frame packing (`image_share`): that share of the rows trains as a one-frame video, the
  clip's first frame with the caption of a still digit.  The causal VAE encodes the first
  frame alone, so its first latent frame *is* the image's latent; the network is told each
  row's frame count (`frames`), masks the missing frames' tokens as keys, and the loss
  counts the real frames only (`regression_loss(mask=)`).  Images and clips thus train in
  one batch, as CogVideoX packs them;
- previews and samples as frame strips (PNG) and GIFs; evaluation by the shipped
  evaluator per frame, the direction of the centre-of-mass path, and temporal consistency
  (`evaluation.video`), beside the same measures on real test clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import objectives as O
from .base import Batch, register
from .diffusion import Diffusion, DiffusionConfig, DiffusionDraw, check_data_kind
from .settings import Range

# settings of image runs that have no meaning for clips (refused by name)
_IMAGE_ONLY = ("clip", "low_res", "noise_aug", "adapter", "placeholder", "instance", "buckets", "micro_conditioning",
               "micro_min_size", "micro_crop", "noise_offset", "reflow_from")


@dataclass(frozen=True)
class VideoConfig(DiffusionConfig):
    explicit_uniform: bool = True      # CogVideoX's explicit uniform times (each rank its own stratum)
    image_share: float = 0.0           # frame packing: the share of rows trained as a one-frame video (an image)


@dataclass
class VideoDraw(DiffusionDraw):
    still: Tensor | None = None        # frame packing: (B,) bool, the row trains as its clip's first frame alone


@register
class Video(Diffusion):
    name = "video"
    Config = VideoConfig
    networks = ("cogvideox",)
    ranges = {**Diffusion.ranges, "image_share": Range(0, 1, high_open=True)}
    resizable_base = True  # base=RUN may be trained on the same clips at another resolution (progressive)

    # --- the settings ---------------------------------------------------------------
    @classmethod
    def check(cls, cfg, config) -> None:
        check_frames(check_data_kind(cls.name, cfg.dataset).shape[1])  # before the image-only settings
        defaults = DiffusionConfig()
        for key in _IMAGE_ONLY:
            if getattr(config, key) != getattr(defaults, key):
                raise ValueError(f"{key}={getattr(config, key)!r} is not valid for family 'video' (an image "
                                 f"run's setting); valid: {getattr(defaults, key)!r}")
        super().check(cfg, config)
        if config.objective != "regression":
            raise ValueError(f"objective={config.objective!r} is not valid for family 'video'; valid: 'regression'")
        if config.weighting == "likelihood":
            raise ValueError("weighting='likelihood' is not valid for family 'video'; valid: 'none', 'min_snr'")
        if config.class_conditional:
            raise ValueError("class_conditional=true is not valid for family 'video'; valid: false (a video run "
                             "is conditioned on captions: text_encoder=tiny|minilm, or unconditional)")
        if config.image_share and not config.autoencoder:
            raise ValueError(f"image_share={config.image_share} needs a causal video autoencoder "
                             "(autoencoder=RUN), whose first latent frame is the first frame's alone; valid: 0.0")

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        if config.autoencoder:
            check_video_first_stage(config.autoencoder, references["first_stage"])
        super().__init__(cfg, config, data, device, references, network_config)

    def _base_network_config(self) -> dict:
        from .progressive import network_config

        return network_config(self)

    def _network_config(self) -> dict:
        out = super()._network_config()
        c, t, h, w = self.sample_shape
        out.setdefault("sample_frames", t)
        out.setdefault("sample_size", h)
        return out

    # --- training -------------------------------------------------------------------
    def caption_vocabulary(self) -> list[str]:
        from ..data.video_captions import video_training_vocabulary

        return video_training_vocabulary()

    def make_captioner(self, data):
        from ..data.video_captions import VideoCaptioner

        return VideoCaptioner(data)

    def draw(self, n: int, generator: torch.Generator) -> VideoDraw:
        d = VideoDraw(**vars(super().draw(n, generator)))
        if self.config.image_share:  # drawn last
            g = generator
            d.still = torch.rand(n, generator=g, device=g.device).to(self.device) < self.config.image_share
        return d

    def loss(self, forward: nn.Module, batch: Batch, draw: VideoDraw, step: int) -> O.Loss:
        config, x0 = self.config, batch.x
        if self.first_stage is not None:  # x0 holds the VAE's posterior moments: draw the latents
            x0 = self.first_stage.sample(x0, draw.latent_noise)
        cond, mask = {}, None
        if self.text is not None:
            cond = self.text(self.captioner.captions(batch.idx, draw.template, draw.drop, still=draw.still),
                             self.device)
        if draw.still is not None:  # frame packing: a still row is its first latent frame alone
            frames = packed_frames(draw.still, x0.shape[2])
            cond["frames"], mask = frames, frame_mask(frames, x0.shape[2])[:, None, :, None, None]
        return O.regression_loss(forward, self.process, x0, target=config.prediction, weighting=config.weighting,
                                 min_snr_gamma=config.min_snr_gamma, noise=draw.noise, t=draw.t, cond=cond or None,
                                 mask=mask)

    # --- previews and sampling ----------------------------------------------------------
    def preview(self, n: int) -> Tensor:
        out, _ = self.generate(n, seed=self.cfg.seed, progress=False)
        return out.x

    def write_preview(self, x: Tensor, path: Path, step: int) -> Path:
        from ..video_io import frame_strip, write_gif

        write_gif(x, Path(path).with_suffix(".gif"))
        return frame_strip(x, path)

    def prompts(self, n: int, label: int | None = None, motion: str | None = None) -> tuple[list, Tensor, list]:
        """n default prompts and what they name (`data.video_captions.clip_prompts`)."""
        from ..data.video_captions import clip_prompts

        return clip_prompts(n, label, motion)

    def generate(self, n: int, *args, prompts: list[str] | None = None, label: int | None = None,
                 motion: str | None = None, **options):
        """n clips (data space: the VAE decodes them); returns (SampleOutput, labels or None).
        A text run without `prompts` draws the digits and motions in turn (`prompts`)."""
        from . import diffusion_sampling

        labels = None
        if self.text is not None and prompts is None and options.get("prompt") is None:
            prompts, labels, _ = self.prompts(n, label, motion)
        elif label is not None or motion is not None:
            raise ValueError("label and motion name the prompts of a text run; give them without prompts")
        out, _ = diffusion_sampling.generate(self, n, *args, prompts=prompts, **options)
        return out, labels

    def evaluate(self, n: int | None = None, *, sampler: str | None = None, steps: int | None = None,
                 seed: int = 0, denoiser=None, **options) -> dict:
        """n clips, each prompt naming a digit and a motion in turn, scored by the shipped
        evaluator per frame, the direction of the centre-of-mass path and temporal
        consistency (`evaluation.video`), beside the same measures on the real test clips."""
        from ..evaluation.video import real_video_report, video_report

        asked = sorted(k for k, v in options.items() if v)  # hirune eval passes the image measures off
        if asked:
            raise ValueError(f"options {asked} are not valid for a video run; valid: sampler, steps, seed, denoiser")
        n = n or 100
        prompts, labels, motions = self.prompts(n)
        out, _ = self.generate(n, sampler, steps, None, seed, prompts=prompts, denoiser=denoiser)
        metrics = {"step": self.step, "dataset": self.data.name, "sampler": sampler or self.config.sampler,
                   "nfe": out.nfe}
        metrics.update(video_report(out.x, labels, motions))
        real = real_video_report(self.data.name, n)
        metrics.update({f"real_{k}": v for k, v in real.items() if not k.startswith("frechet")})
        return metrics


def check_frames(frames: int) -> None:
    """A clip's frame count: 4k+1 (the causal VAE encodes the first frame alone and each 4 after it)."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames={frames} is not valid; valid: 4k+1 frames (1, 5, 9, 13, 17, ...)")


def check_video_first_stage(path: str, first_stage) -> None:
    """A video run's autoencoder must encode clips: an image autoencoder is refused by name."""
    data = getattr(first_stage, "data", None)  # the DataFormat it was trained on
    if data is None or data.kind != "video":
        trained = getattr(data, "name", "?")
        raise ValueError(f"autoencoder={path!r} is an image autoencoder (trained on {trained}); a video run needs "
                         "a video autoencoder (model video_kl, e.g. `hirune train video-vae-moving-mnist5k`)")


def packed_frames(still: Tensor, frames: int) -> Tensor:
    """Each row's number of real latent frames: 1 for a still row, all of them otherwise."""
    return torch.where(still, 1, frames).long()


def frame_mask(frames: Tensor, total: int) -> Tensor:
    """(B, total) float: 1 for each row's first frames[b] frames, 0 after (the network's
    `real_frames`, as the loss's weights)."""
    from ..models.cogvideox import real_frames

    return real_frames(frames, total).float()
