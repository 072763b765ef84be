"""The clip family: a contrastive image-text model (CLIP, Radford et al. 2021) on the
captioned digit sets.  Each training example is an image and its caption, written from the
label and the measured thickness and slant in one of the training phrasings, drawn per
example and step (`data.captions`, as the text-to-image diffusion runs draw theirs); the
loss is the symmetric InfoNCE over the global micro-batch (`objectives.contrastive`,
embeddings all-gathered with gradients across processes).

    run = load("runs/clip-mnist5k")
    run.similarity(images, ["a handwritten seven", "the digit 3"])   (N_images, N_texts) cosines
    run.zero_shot(images)                                            labels from "an image of a {name}"
    run.evaluate()        zero-shot accuracy (training / held-out phrasings), recall@1 both ways

Its section: `text_encoder` tiny (the word tokenizer and a trainable text transformer) or
minilm (frozen all-MiniLM-L6-v2 token outputs, mean-pooled, a trained projection).  The
network's sizes live in its model_config (`models.clip.CLIPConfig`).  No previews; a clip
run does not sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES
from ..models.text import TEXT_ENCODERS
from ..objectives import Loss
from .base import Batch, Context, Draw, Family, check_eval_counts, refuse_extras, register, spread
from .settings import check_choices

EMBED_CHUNK = 500                    # images or captions embedded at once


@dataclass(frozen=True)
class ClipConfig:
    text_encoder: str = "tiny"         # tiny | minilm (models.text)


@dataclass
class ClipDraw(Draw):
    """template: the caption phrasing of each example (index into TRAIN_TEMPLATES)."""

    template: Tensor | None = None


@register
class Clip(Family):
    name = "clip"
    Config = ClipConfig
    networks = ("clip",)
    has_previews = False
    evaluates_test_examples = True  # zero-shot and retrieval over n test images

    @classmethod
    def check(cls, cfg, config) -> None:
        from ..data import data_format, dataset_source
        from ..models import model_config

        super().check(cfg, config)
        check_choices(config, {"text_encoder": TEXT_ENCODERS})
        model_config(cfg.model, cfg.model_config)  # the network's sizes, refused before any folder is made
        if dataset_source(cfg.dataset) == "registered":  # (other datasets are checked when built)
            check_captioned(data_format(cfg.dataset))

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        from ..models.text import TextConditioner

        check_captioned(data)
        self.text = TextConditioner(config.text_encoder)
        out = {"in_channels": data.shape[0], "image_size": data.shape[1], "context_len": self.text.max_len,
               "vocab_size": self.text.vocab_size or 0, "text_in_dim": self.text.context_dim}
        self.model = self._build(cfg.model, network_config or {**cfg.model_config, **out})
        self.captioner = None

    # --- training -------------------------------------------------------------------
    def prepare(self, data, context: Context) -> None:
        from ..data.captions import Captioner

        super().prepare(data, context)
        self.captioner = Captioner(data.data, data.labels)

    def draw(self, n: int, generator: torch.Generator) -> ClipDraw:
        g = generator
        return ClipDraw(torch.randint(len(TRAIN_TEMPLATES), (n,), generator=g, device=g.device).to(self.device))

    def loss(self, forward: nn.Module, batch: Batch, draw: ClipDraw, step: int) -> Loss:
        from ..objectives.contrastive import contrastive_loss

        self.model.clamp_temperature_()  # CLIP clamps after each step; here before each forward, the same weights
        context = self.text(self.captioner.captions(batch.idx, draw.template), self.device)
        image_emb, text_emb, logit_scale = forward(batch.x, context["context"], context["context_mask"])
        return contrastive_loss(image_emb, text_emb, logit_scale, gather=self.context.world.distributed)

    def logged_terms(self, terms: dict) -> dict[str, float]:
        """Both cross-entropies, the logit scale, the share of the batch matched both ways."""
        return {k: float(v) for k, v in terms.items()}

    # --- inference ------------------------------------------------------------------
    @torch.no_grad()
    def embed_image(self, x: Tensor) -> Tensor:
        """Images (N, 1, S, S) in [-1, 1] -> unit embeddings (N, embed_dim), on the CPU."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.data.shape):
            raise ValueError(f"images of this run are (N, {', '.join(map(str, self.data.shape))}); "
                             f"got {tuple(x.shape)}")
        return torch.cat([self.model.encode_image(chunk.to(self.device).float()).cpu()
                          for chunk in x.split(EMBED_CHUNK)])

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        """Captions -> unit embeddings (N, embed_dim), on the CPU."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings")
        out = []
        for start in range(0, len(texts), EMBED_CHUNK):
            context = self.text(list(texts[start: start + EMBED_CHUNK]), self.device)
            out.append(self.model.encode_text(context["context"], context["context_mask"]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.embed_dim)

    @torch.no_grad()
    def embed_text_tokens(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Captions -> the text tower's per-token outputs (N, M, W) and their mask (N, M)
        bool, on the CPU (`CLIP.encode_text_tokens`; unCLIP's prior reads them)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings")
        tokens, masks = [], []
        for start in range(0, len(texts), EMBED_CHUNK):
            context = self.text(list(texts[start: start + EMBED_CHUNK]), self.device)
            t, m = self.model.encode_text_tokens(context["context"], context["context_mask"])
            tokens.append(t.float().cpu())
            masks.append(m.bool().cpu())
        if not tokens:
            return torch.zeros(0, self.text.max_len, self.model.text_token_width), torch.zeros(0, self.text.max_len,
                                                                                                dtype=torch.bool)
        return torch.cat(tokens), torch.cat(masks)

    def similarity(self, images: Tensor, texts: list[str]) -> Tensor:
        """Cosine similarities (N_images, N_texts)."""
        return self.embed_image(images) @ self.embed_text(texts).T

    def zero_shot(self, images: Tensor, prompt_template: str | list[str] = "an image of a {name}") -> Tensor:
        """Predicted digits (N,): the class whose prompt is nearest each image.  The prompt
        names the digit by {name} ("seven") or {digit} ("7"); a list of templates is a
        prompt ensemble (the mean of the unit embeddings of each class's prompts)."""
        from ..evaluation.contrastive import class_embeddings, zero_shot_labels

        templates = [prompt_template] if isinstance(prompt_template, str) else list(prompt_template)
        for t in templates:
            check_template(t)
        return zero_shot_labels(self.embed_image(images), class_embeddings(self.embed_text, templates,
                                                                           self.data.num_classes))

    def generate(self, n: int, *args, **options):
        raise ValueError("a clip run does not sample; `hirune eval` reports its zero-shot accuracy and retrieval")

    def evaluate(self, n: int | None = None, *, nll: int = 0, text_accuracy: int = 0, denoising_error: int = 0,
                 **unused) -> dict:
        """On n test examples (None: all of them; fewer: spread evenly over the split, which
        is sorted by digit on mnist5k): zero-shot accuracy with each training and
        held-out phrasing and with each set as a prompt ensemble (plain attributes, and all
        9 thickness x slant variants; `evaluation.contrastive`), and recall@1 image -> text
        and text -> image over the examples' captions (example i written in training phrasing
        i mod 4, its measured attributes included)."""
        from ..data import load_dataset
        from ..data.captions import Captioner
        from ..evaluation.contrastive import recall_at_1, zero_shot_report

        n = check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        if text_accuracy:
            raise ValueError("--text-accuracy scores the samples of a text-to-image run; a clip run does not sample "
                             "(its evaluation gives zero-shot accuracy with the training and held-out phrasings)")
        refuse_extras(self, nll, text_accuracy, denoising_error)
        test = load_dataset(self.data.name, "test")
        idx = spread(n, len(test.data))
        images, labels = test.data[idx], test.labels[idx].long()
        image_emb = self.embed_image(images)
        report = zero_shot_report(image_emb, self.embed_text, labels,
                                  {"train": TRAIN_TEMPLATES, "held_out": HELD_OUT_TEMPLATES})
        # attributes measured over the whole test split, as training measures them over its split
        captions = Captioner(test.data, test.labels).captions(idx, torch.arange(n) % len(TRAIN_TEMPLATES))
        report.update(recall_at_1(image_emb, self.embed_text(captions), captions))
        return {"step": self.step, "dataset": self.data.name, "examples": n, **report}


def check_captioned(data) -> None:
    """The captions are written from digit labels and measured ink: labelled 1-channel images."""
    if data.kind != "image" or not data.num_classes or data.shape[0] != 1:
        raise ValueError(f"dataset={data.name!r} is not valid for a clip run; valid: labelled 1-channel digit "
                         f"images, whose captions are written from the labels (digits, mnist5k); {data.name} "
                         f"holds {data.kind} data of shape {tuple(data.shape)} with "
                         f"{data.num_classes or 'no'} classes")


def check_template(template: str) -> None:
    """A zero-shot prompt template names the digit by {name} or {digit}; other fields are
    those of the captions ({adj}, {slant}, {strokes}, {lean}, {weight}: empty here)."""
    from ..data.captions import caption

    if "{name}" not in template and "{digit}" not in template:
        raise ValueError(f"prompt_template={template!r} is not valid; valid: a string naming the digit by "
                         "{name} (e.g. 'an image of a {name}') or {digit} ('the digit {digit}')")
    try:
        caption(0, template=template)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"prompt_template={template!r} is not valid; valid fields: {{name}}, {{digit}}, {{adj}}, "
                         f"{{slant}}, {{strokes}}, {{lean}}, {{weight}} ({e!r})") from None


__all__ = ["Clip", "ClipConfig", "ClipDraw", "check_template"]
