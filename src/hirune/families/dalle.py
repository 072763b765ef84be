"""The dalle family: DALL-E's text-to-image transformer (Ramesh et al. 2021) over the codes of
a trained image tokenizer.

    caption --BPE / words--> text tokens (B, L) --+
    image --tokenizer run's encode_codes--> codes (B, h w) --> causal transformer -> next-token logits
    sampling: codes drawn one by one (sampling.autoregressive) --tokenizer's decode_codes--> images

The tokenizer is another trained run, the reference "tokenizer" (`tokenizer=RUN`, like
latent diffusion's `autoencoder=RUN`), loaded light, frozen and copied into the run's
`references/`; its network need only speak the image-token protocol: `num_codes`,
`encode_codes(x) -> (B, h, w)` and `decode_codes(codes) -> x` (the VQ autoencoder, the
discrete VAE).  The training images are tokenized once.

Captions are written per example and step as for text diffusion (`data.captions`), dropped
to the null caption "" with probability `p_uncond` (classifier-free guidance), and read by
a BPE tokenizer trained on the training captions (`text_tokenizer=bpe`, kept as JSON in
every checkpoint) or the word tokenizer (`word`).  The loss is DALL-E's: cross-entropy of
the next text token and of the next image code, weighted text_loss_weight (1/8) and
1 - text_loss_weight (7/8); the text part averages over the caption's tokens (padding is
not scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..objectives import Loss
from .base import Batch, Context, Draw, Family, check_eval_counts, refuse_extras, register
from .settings import Range, check_choices

TEXT_TOKENIZERS = ("bpe", "word")


@dataclass(frozen=True)
class DalleConfig:
    tokenizer: str = ""                # the image tokenizer: a trained run (VQ autoencoder, discrete VAE)
    text_tokenizer: str = "bpe"        # bpe (trained on the training captions) | word (models.text)
    text_len: int = 24                 # text tokens per caption, [BOS] included; longer ones are cut
    bpe_vocab: int = 128               # at most this many BPE tokens (specials included)
    text_loss_weight: float = 0.125    # DALL-E: text 1/8, image 7/8
    p_uncond: float = 0.1              # caption dropout to "" for classifier-free guidance
    top_k: int = 0                     # previews and the defaults of `generate`: 0 / 1.0 = off
    top_p: float = 1.0


@dataclass
class DalleDraw(Draw):
    """drop: caption dropped to "" (B,) bool; template: each example's training phrasing (B,)."""

    drop: Tensor | None = None
    template: Tensor | None = None


def token_loss(forward, vocabulary, text: Tensor, codes: Tensor, text_loss_weight: float) -> tuple[Tensor, dict]:
    """DALL-E's loss per example (B,): text_loss_weight x the mean cross-entropy of the
    caption's next tokens (PAD targets not scored) + (1 - text_loss_weight) x that of the
    image's codes.  forward: the network (or its DDP wrapper); vocabulary: its
    `JointVocabulary`; text (B, L) ids, codes (B, N)."""
    from ..models.text import PAD

    L = text.shape[1]
    logits = forward(text, codes[:, :-1])                              # (B, L + N - 1, V)
    logits = logits if logits.dtype == torch.float64 else logits.float()  # autocast's bf16: scored in fp32
    text_targets = text[:, 1:]
    text_ce = F.cross_entropy(vocabulary.text_logits(logits[:, : L - 1]).transpose(1, 2), text_targets,
                              reduction="none")
    scored = (text_targets != PAD).float()                             # padding is not a caption token
    text_loss = (text_ce * scored).sum(1) / scored.sum(1).clamp_min(1)
    image_ce = F.cross_entropy(vocabulary.image_logits(logits[:, L - 1:]).transpose(1, 2), codes, reduction="none")
    image_loss = image_ce.mean(1)
    per_sample = text_loss_weight * text_loss + (1 - text_loss_weight) * image_loss
    return per_sample, {"text_loss": text_loss.mean().detach(), "image_loss": image_loss.mean().detach()}


@register
class Dalle(Family):
    name = "dalle"
    Config = DalleConfig
    networks = ("dalle",)
    resumable = ("top_k", "top_p")
    ranges = {"text_len": Range(2, integer=True), "bpe_vocab": Range(8, integer=True),
              "text_loss_weight": Range(0, 1), "p_uncond": Range(0, 1, high_open=True),
              "top_k": Range(0, integer=True), "top_p": Range(0, 1, low_open=True)}
    samples_tokens = True  # `hirune sample` passes it the autoregressive options
    guided_by_scale = True  # classifier-free guidance on the logits at `scale`

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        from . import dalle_tokens

        if data.kind != "image" or not data.num_classes:
            raise ValueError(f"dalle writes captions from labels and needs labelled images (digits, mnist5k); "
                             f"{data.name} is not")
        self.image_tokenizer = dalle_tokens.ImageTokenizer(self.references["tokenizer"], self.device)
        if self.image_tokenizer.dataset != data.name:
            raise ValueError(f"the tokenizer run {config.tokenizer} was trained on {self.image_tokenizer.dataset}, "
                             f"this run is on {data.name}")
        self.grid = self.image_tokenizer.grid(tuple(data.shape))
        # bpe: trained in prepare or read back
        self.text = dalle_tokens.text_tokenizer(config, saved=None, dataset=data.name)
        network = network_config or {
            **self.cfg.model_config, "text_vocab": dalle_tokens.text_vocab_size(config, self.text),
            "text_len": config.text_len, "num_codes": self.image_tokenizer.num_codes,
            "image_len": self.grid[0] * self.grid[1]}
        self.model = self._build(cfg.model, network)
        self.captioner = self.codes = None

    @classmethod
    def check(cls, cfg, config) -> None:
        super().check(cfg, config)
        check_choices(config, {"text_tokenizer": TEXT_TOKENIZERS})
        from ..data.video_captions import captioned_as_clips

        if captioned_as_clips(cfg.dataset) and config.text_tokenizer != "word":
            raise ValueError(f"text_tokenizer={config.text_tokenizer!r} is not valid on {cfg.dataset} (captioned as "
                             "clips, for a video model to start from); valid: 'word' (over every word of the "
                             "clips' captions, motion words included, so the video model reads them)")
        if not config.tokenizer:
            raise ValueError("dalle needs tokenizer=RUN, a trained image tokenizer run (e.g. `hirune train "
                             "vq-ae-mnist5k`, then tokenizer=runs/vq-ae-mnist5k)")
        derived = sorted(set(cfg.model_config) & {"text_vocab", "text_len", "num_codes", "image_len"})
        if derived:
            raise ValueError(f"model_config keys {derived} of a dalle run come from its settings and tokenizers "
                             "(text_len=, bpe_vocab=, the tokenizer run's codes); remove them from model_config")

    @classmethod
    def reference_paths(cls, config, training: bool) -> dict[str, str]:
        return {"tokenizer": config.tokenizer} if config.tokenizer else {}

    @classmethod
    def missing_reference(cls, role: str, path: str) -> str:
        return (f"tokenizer run {path} does not exist; train one first, e.g. `hirune train vq-ae-mnist5k`, then "
                "pass tokenizer=runs/vq-ae-mnist5k")

    # --- training -------------------------------------------------------------------
    def prepare(self, data, context: Context) -> None:
        from ..data.captions import Captioner
        from ..data.video_captions import VideoCaptioner, captioned_as_clips

        from . import dalle_tokens

        super().prepare(data, context)
        self.captioner = VideoCaptioner(data) if captioned_as_clips(data.name) else Captioner(data.data, data.labels)
        if self.config.text_tokenizer == "bpe":
            self.text = dalle_tokens.train_bpe(self.captioner, self.config)
        self.codes = self.image_tokenizer.encode(data.data)[:, None]  # (N, 1, h, w): the loop's image layout

    @property
    def uses_labels(self) -> bool:
        return False  # the captions come from the captioner, by example index

    def training_data(self) -> tuple[Tensor, Tensor | None]:
        return self.codes, None

    def draw(self, n: int, generator: torch.Generator) -> DalleDraw:
        from ..data.captions import TRAIN_TEMPLATES

        g = generator
        d = DalleDraw()
        if self.config.p_uncond > 0:
            d.drop = (torch.rand(n, generator=g, device=g.device) < self.config.p_uncond).to(self.device)
        d.template = torch.randint(len(TRAIN_TEMPLATES), (n,), generator=g, device=g.device).to(self.device)
        return d

    def text_tokens(self, captions: list[str]) -> Tensor:
        """Captions -> (B, text_len) token ids on the device."""
        return self.text(list(captions))[0].to(self.device)

    def loss(self, forward: nn.Module, batch: Batch, draw: DalleDraw, step: int) -> Loss:
        text = self.text_tokens(self.captioner.captions(batch.idx, draw.template, draw.drop))
        codes = batch.x.flatten(1).long()
        per_sample, terms = token_loss(forward, self.model.vocabulary, text, codes, self.config.text_loss_weight)
        return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(codes), device=codes.device), terms)

    def logged_terms(self, terms: dict) -> dict[str, float]:
        return {k: float(v) for k, v in terms.items()}

    def checkpoint(self, ema):
        tensors, state = super().checkpoint(ema)
        if self.config.text_tokenizer == "bpe":
            state["text_tokenizer"] = self.text.to_json()
        return tensors, state

    def restore(self, tensors: dict, state: dict) -> None:
        super().restore(tensors, state)
        self.restore_loaded(state)

    def restore_loaded(self, state: dict) -> None:
        from . import dalle_tokens

        if self.config.text_tokenizer == "bpe":
            if not state.get("text_tokenizer"):
                raise ValueError("this dalle checkpoint or export holds no BPE text tokenizer (state "
                                 "'text_tokenizer'); re-export the run with this version of hirune")
            self.text = dalle_tokens.text_tokenizer(self.config, saved=state["text_tokenizer"], dataset=self.data.name)

    def preview(self, n: int) -> Tensor:
        return self.generate(n, seed=self.cfg.seed, progress=False)[0].x

    # --- inference: dalle_sampling.py -------------------------------------------------
    def generate(self, n: int, *args, **options):
        from . import dalle_sampling

        return dalle_sampling.generate(self, n, *args, **options)

    def evaluate(self, n: int | None = None, *, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 nll: int = 0, denoiser=None, guided_labels: bool = False, text_accuracy: int = 0,
                 denoising_error: int = 0, scale: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> dict:
        """n samples (captions naming the digits in turn) against the test split; text_accuracy:
        that many samples per caption phrasing (`evaluation.text`); scale: classifier-free
        guidance on the logits (1: off)."""
        from ..evaluation.quality import sample_quality
        from ..evaluation.text import text_accuracy as accuracy

        from ..data.video_captions import captioned_as_clips

        n = check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        if text_accuracy and captioned_as_clips(self.data.name):
            raise ValueError(f"text_accuracy scores the image captions' phrasings; {self.data.name} is captioned as "
                             "clips: valid: 0")
        refuse_extras(self, nll, 0, denoising_error)
        if sampler is not None or steps is not None or denoiser is not None or guided_labels:
            raise ValueError("a dalle run draws image tokens one by one: --sampler, --steps and --guidance do not "
                             "apply")
        options = {"scale": scale, "top_k": top_k, "top_p": top_p, "progress": False}
        out, labels = self.generate(n, seed=seed, **options)
        metrics = {"step": self.step, "dataset": self.data.name, "scale": scale, "nfe": out.nfe}
        if captioned_as_clips(self.data.name):  # still frames: the clips' measures on one-frame videos
            from ..evaluation.video import video_report

            metrics.update(video_report(out.x[:, :, None], labels, [-1] * len(labels)))
        else:
            metrics.update(sample_quality(self.data.name, "image", out.x, labels))
        if text_accuracy:
            metrics.update(accuracy(lambda prompts, k: self.generate(text_accuracy, seed=seed + k, prompts=prompts,
                                                                     **options)[0].x,
                                    self.data.name, text_accuracy))
        return metrics
