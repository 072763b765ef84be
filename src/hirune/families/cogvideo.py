"""The cogvideo family: CogVideo (Hong et al. 2022) at digit scale -- text to video as
autoregression over the frames' image tokens, started from a trained text-to-image run.

    image_model=RUN   a dalle run on the still frames (moving-mnist5k-stills): its image
                      tokenizer (frames <-> 8 x 8 codes), its word tokenizer (which reads the
                      clips' motion words) and its weights, which become every block's
                      spatial channel (`models.cogvideo`: dual-channel attention, the new
                      temporal channel gated at 0, so training starts at the image model)
    stage=keyframes   [caption | frame-rate token | K frames at gap g], g drawn per clip from
                      GAPS (1, 2, 4): K = 5 frames at gap 4 span the 17 frames of
                      moving-mnist5k-17; the token says g (sec. 3.1: multi-frame-rate
                      hierarchical training)
    stage=interpolate [caption | frame-rate token | a, b | m]: the frame m halfway between two
                      known frames a, b that are 2h apart, the token saying h (sec. 3.1's
                      recursive interpolation).  Applied to every neighbouring pair of a
                      clip at gap g it gives the clip at gap g / 2: 5 frames at gap 4 -> 9 at
                      gap 2 -> 17 at gap 1 (`cogvideo_sampling.interpolate_clip`)

Key frames always start at the clip's first frame, so the caption, which names the first
leg's motion, stays true of them; interpolation triples start anywhere in the clip.  The loss
is DALL-E's: text 1/8 and codes 7/8 (an interpolation run scores the middle frame's codes
only); captions drop to "" with p_uncond for classifier-free guidance.  Sampling and
evaluation: `cogvideo_sampling`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..objectives import Loss
from . import cogvideo_sampling
from .base import Batch, Context, Draw, Family, register
from .cogvideo_sampling import GAPS, check_gap  # noqa: F401 (check_gap: refusing gaps by name, re-exported)
from .settings import Range, check_choices

STAGES = ("keyframes", "interpolate")
TRIPLE_TIMES = (0, 2, 1)                 # interpolation's frame slots a, b, m: their times in the triple


@dataclass(frozen=True)
class CogVideoFamilyConfig:
    image_model: str = ""              # a dalle run on moving-mnist5k-stills (tokenizers and spatial weights)
    stage: str = "keyframes"           # keyframes | interpolate (the frame between two known ones)
    frames: int = 5                    # key frames per clip (stage keyframes)
    from_scratch: bool = False         # every weight drawn (the comparison), the image run's tokenizers kept
    freeze_spatial: bool = False       # train only the new weights (temporal channels, gates, rate and time)
    text_loss_weight: float = 0.125    # DALL-E: text 1/8, image 7/8
    p_uncond: float = 0.1              # caption dropout to "" for classifier-free guidance
    top_k: int = 0                     # previews and the defaults of `generate`: 0 / 1.0 = off
    top_p: float = 1.0


@dataclass
class CogVideoDraw(Draw):
    """drop (B,) bool: caption dropped; template (B,): training phrasing; gap (B,): the index in
    GAPS of each clip's gap (interpolation: of h, half the pair's); start (B,) in [0, 1): where
    an interpolation triple begins in its clip."""

    drop: Tensor | None = None
    template: Tensor | None = None
    gap: Tensor | None = None
    start: Tensor | None = None


def frame_indices(stage: str, frames: int, gap: Tensor, start: Tensor, clip_frames: int) -> Tensor:
    """(B, F) the clip frames each row's sequence holds, in sequence order: key frames 0, g,
    .., (K-1) g; interpolation a = s, b = s + 2h, m = s + h with s uniform over the starts
    that fit (from `start` in [0, 1)).  gap: (B,) gaps in frames (not indices)."""
    if stage == "keyframes":
        return torch.arange(frames, device=gap.device)[None] * gap[:, None]
    s = (start * (clip_frames - 2 * gap)).long().clamp_max(clip_frames - 1 - 2 * gap)
    return torch.stack([s, s + 2 * gap, s + gap], 1)


def frame_slots(stage: str, frames: int) -> tuple[int, ...]:
    """Each frame slot's time (the temporal channel's table row): 0..K-1, or a, b, m's 0, 2, 1."""
    return tuple(range(frames)) if stage == "keyframes" else TRIPLE_TIMES


def video_token_loss(forward, vocabulary, text: Tensor, rate: Tensor, codes: Tensor, times: Tensor,
                     scored: int, text_loss_weight: float) -> tuple[Tensor, dict]:
    """DALL-E's loss (`families.dalle.token_loss`) over a video sequence: per example (B,),
    text_loss_weight x the caption's next-token cross-entropy (PAD not scored) + the rest x
    that of the last `scored` codes.  codes (B, F N) flattened frames, times (F,)."""
    from ..models.cogvideo import predictor_positions
    from ..models.text import PAD

    L, n = text.shape[1], codes.shape[1]
    logits = forward(text, rate, codes[:, :-1], times)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    targets = text[:, 1:]
    text_ce = F.cross_entropy(vocabulary.text_logits(logits[:, : L - 1]).transpose(1, 2), targets, reduction="none")
    words = (targets != PAD).float()
    text_loss = (text_ce * words).sum(1) / words.sum(1).clamp_min(1)
    which = torch.arange(n - scored, n, device=codes.device)
    positions = predictor_positions(L, forward_image_len(forward), which)
    code_ce = F.cross_entropy(vocabulary.image_logits(logits[:, positions]).transpose(1, 2), codes[:, which],
                              reduction="none").mean(1)
    per_sample = text_loss_weight * text_loss + (1 - text_loss_weight) * code_ce
    return per_sample, {"text_loss": text_loss.mean().detach(), "image_loss": code_ce.mean().detach()}


def forward_image_len(forward) -> int:
    """N of the network behind `forward` (itself or a DDP / FSDP wrapper's module)."""
    return getattr(forward, "module", forward).config.image_len


@register
class CogVideo(Family):
    name = "cogvideo"
    Config = CogVideoFamilyConfig
    networks = ("cogvideo",)
    resumable = ("top_k", "top_p")
    ranges = {"frames": Range(2, integer=True), "text_loss_weight": Range(0, 1),
              "p_uncond": Range(0, 1, high_open=True), "top_k": Range(0, integer=True),
              "top_p": Range(0, 1, low_open=True)}
    samples_tokens = True
    guided_by_scale = True

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        image = self.references["image_model"]
        check_image_run(config.image_model, image, data)
        self.image_run = image
        self.image_tokenizer, self.text = image.image_tokenizer, image.text
        self.grid = image.grid
        self.times = torch.tensor(frame_slots(config.stage, config.frames))
        network = network_config or {**dataclasses.asdict(image.model.config), "frames": len(self.times),
                                     "rates": len(GAPS)}
        self.model = self._build(cfg.model, network)
        self.captioner = self.codes = None

    @classmethod
    def check(cls, cfg, config) -> None:
        from ..data.registry import DATASETS

        super().check(cfg, config)
        check_choices(config, {"stage": STAGES})
        if not config.image_model:
            raise ValueError("cogvideo needs image_model=RUN, a dalle run on the still frames (e.g. `hirune train "
                             "vq-ae-moving-stills`, `hirune train dalle-moving-stills`, then "
                             "image_model=runs/dalle-moving-stills)")
        spec = DATASETS.get(cfg.dataset)
        videos = sorted(n for n, s in DATASETS.items() if s.kind == "video" and s.shape[1] > 1)
        if spec is None or spec.kind != "video" or spec.shape[1] == 1:
            raise ValueError(f"dataset={cfg.dataset!r} is not valid for family 'cogvideo'; valid: {videos}")
        span = (config.frames - 1) * max(GAPS) + 1 if config.stage == "keyframes" else 2 * max(GAPS) + 1
        if span > spec.shape[1]:
            raise ValueError(f"{config.stage} at gaps {list(GAPS)} spans {span} frames, more than the {spec.shape[1]} "
                             f"of {cfg.dataset}; valid: a dataset of >= {span} frames (moving-mnist5k-17), or fewer "
                             "frames=")
        if cfg.model_config:
            raise ValueError(f"model_config {sorted(cfg.model_config)} of a cogvideo run comes from its image_model "
                             "run (the spatial channel is that network); remove it")

    @classmethod
    def reference_paths(cls, config, training: bool) -> dict[str, str]:
        return {"image_model": config.image_model} if config.image_model else {}

    @classmethod
    def missing_reference(cls, role: str, path: str) -> str:
        return (f"image_model run {path} does not exist; train one first: `hirune train vq-ae-moving-stills`, then "
                "`hirune train dalle-moving-stills`")

    # --- training -------------------------------------------------------------------
    def prepare(self, data, context: Context) -> None:
        from ..data.video_captions import VideoCaptioner

        super().prepare(data, context)
        self.captioner = VideoCaptioner(data)
        n, _, t = data.data.shape[:3]
        # each frame's codes, encoded the first time a step uses it (-1: not yet): encoding all 76 500
        # frames first would cost more CPU than the whole run trains (the tokenizer is deterministic, so a
        # resumed run encodes the same codes)
        self.codes = torch.full((n, t, self.grid[0] * self.grid[1]), -1, dtype=torch.long, device=self.device)
        if not self.config.from_scratch:  # the image model's weights (a resumed run reads its own after this)
            self.model.load_image_weights(self.image_run.model.state_dict())
        if self.config.freeze_spatial:
            new = set(self.model.new_parameter_names())
            for name, p in self.model.named_parameters():
                p.requires_grad_(name in new)

    def frame_codes(self, clips: Tensor, idx: Tensor, which: Tensor) -> Tensor:
        """(B, F, N) the codes of frames `which` (B, F) of the clips (B, C, T, H, W) at positions
        idx (B,) of the training data: each (clip, frame) encoded once and kept."""
        need = self.codes[idx[:, None], which, 0] < 0
        if need.any():
            rows, cols = need.nonzero(as_tuple=True)
            frames = which[rows, cols]
            self.codes[idx[rows], frames] = self.image_tokenizer.encode(clips[rows, :, frames]).flatten(1).to(
                self.codes.device)
        return self.codes[idx[:, None], which]

    def draw(self, n: int, generator: torch.Generator) -> CogVideoDraw:
        g = generator
        d = CogVideoDraw()
        if self.config.p_uncond > 0:
            d.drop = (torch.rand(n, generator=g, device=g.device) < self.config.p_uncond).to(self.device)
        d.template = torch.randint(4, (n,), generator=g, device=g.device).to(self.device)
        d.gap = torch.randint(len(GAPS), (n,), generator=g, device=g.device).to(self.device)
        d.start = torch.rand(n, generator=g, device=g.device).to(self.device)
        return d

    def text_tokens(self, captions: list[str]) -> Tensor:
        return self.text(list(captions))[0].to(self.device)

    def loss(self, forward: nn.Module, batch: Batch, draw: CogVideoDraw, step: int) -> Loss:
        c = self.config
        text = self.text_tokens(self.captioner.captions(batch.idx, draw.template, draw.drop))
        gaps = torch.tensor(GAPS, device=batch.x.device)[draw.gap]
        which = frame_indices(c.stage, c.frames, gaps, draw.start, batch.x.shape[2])     # (B, F)
        codes = self.frame_codes(batch.x, batch.idx.to(self.device), which).flatten(1)
        scored = codes.shape[1] if c.stage == "keyframes" else codes.shape[1] // len(self.times)
        per_sample, terms = video_token_loss(forward, self.model.vocabulary, text, draw.gap, codes,
                                             self.times.to(codes.device), scored, c.text_loss_weight)
        return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(codes), device=codes.device), terms)

    def logged_terms(self, terms: dict) -> dict[str, float]:
        return {k: float(v) for k, v in terms.items()}

    # --- previews, sampling, evaluation: cogvideo_sampling.py ---------------------------
    def preview(self, n: int) -> Tensor:
        if self.config.stage == "interpolate":  # the middle frames of real test triples
            return cogvideo_sampling.preview_interpolation(self, n)
        return self.generate(n, seed=self.cfg.seed, progress=False)[0].x

    def write_preview(self, x: Tensor, path: Path, step: int) -> Path:
        from ..video_io import frame_strip, write_gif

        write_gif(x, Path(path).with_suffix(".gif"))
        return frame_strip(x, path)

    def generate(self, n: int, *args, **options):
        return cogvideo_sampling.generate(self, n, *args, **options)

    def evaluate(self, n: int | None = None, **options) -> dict:
        return cogvideo_sampling.evaluate(self, n, **options)


def check_image_run(path: str, image, data) -> None:
    """The image run a cogvideo run starts from: a dalle run, on still frames captioned as clips
    (its word tokenizer reads the motion words), of the clips' canvas."""
    from ..data.video_captions import captioned_as_clips

    if getattr(image, "name", None) != "dalle":
        raise ValueError(f"image_model={path!r} is a {getattr(image, 'name', '?')} run; valid: a dalle run (its "
                         "transformer becomes the spatial channel), e.g. `hirune train dalle-moving-stills`")
    if not captioned_as_clips(image.data.name):
        raise ValueError(f"image_model={path!r} was trained on {image.data.name}, whose captions and tokenizer do not "
                         "describe the clips; valid: a dalle run on moving-mnist5k-stills (`hirune train "
                         "dalle-moving-stills`)")
    if image.image_tokenizer.dataset != image.data.name:
        raise ValueError(f"the image tokenizer of {path!r} was trained on {image.image_tokenizer.dataset}, not on "
                         f"{image.data.name}")
    if tuple(image.data.shape) != (data.shape[0], *data.shape[2:]):
        raise ValueError(f"image_model={path!r} draws {tuple(image.data.shape)} images; the frames of {data.name} "
                         f"are {(data.shape[0], *data.shape[2:])}")
