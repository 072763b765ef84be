"""CLIP (Radford et al. 2021): an image tower and a text tower, each projected to `embed_dim`
and L2-normalised, and a learnable temperature.

    model = build_model("clip", in_channels=1, image_size=28, vocab_size=40, context_len=16)
    image_emb, text_emb, logit_scale = model(images, context, context_mask)
    logits = logit_scale * image_emb @ text_emb.T          # objectives.contrastive

images (B, C, S, S) in [-1, 1] -> a small CNN (two conv blocks, pooled to 4 x 4, as the
shipped evaluator's) -> Linear -> (B, embed_dim).  The text tower reads either token ids
(B, M) int64 of the word tokenizer through a trainable `TextTransformer` (vocab_size > 0),
or a frozen encoder's per-token outputs (B, M, text_in_dim) float (vocab_size = 0: the
all-MiniLM-L6-v2 features of `models.text`); either way the real tokens are mean-pooled
(padding skipped) and projected (B, embed_dim).

The temperature is stored as log(logit scale), initialised to log(1 / 0.07), and the scale
used is exp(min(log_logit_scale, log 100)): CLIP clips the scale at 100 "to prevent
training instability" (sec. 2.5).  CLIP clamps the parameter itself after every step;
`clamp_temperature_` does that here (the clip family calls it before each forward), and
the forward's clamp keeps any weights read elsewhere (EMA, a loaded run) within the bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.context import TextTransformer, masked_mean
from .config import check_fields

MAX_LOG_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class CLIPConfig:
    in_channels: int = 1
    image_size: int = 28
    channels: int = 32                 # the image CNN's width (2x in its second block)
    embed_dim: int = 64                # the joint embedding
    vocab_size: int = 0                # > 0: token ids through a TextTransformer; 0: frozen features
    text_dim: int = 128                # the trainable text transformer's width
    text_depth: int = 2
    text_heads: int = 4
    text_in_dim: int = 384             # vocab_size 0: the frozen encoder's feature width (MiniLM: 384)
    context_len: int = 32              # tokens per caption
    init_temperature: float = 0.07     # logit scale starts at 1 / this

    def __post_init__(self):
        check_fields(self)
        for name in ("in_channels", "image_size", "embed_dim", "text_dim", "text_depth", "text_heads", "text_in_dim",
                     "context_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"CLIPConfig.{name}={getattr(self, name)} is not valid; valid: an integer >= 1")
        if self.channels < 8 or self.channels % 8:
            raise ValueError(f"CLIPConfig.channels={self.channels} is not valid; valid: a multiple of 8 (GroupNorm "
                             "of 8 groups)")
        if self.vocab_size < 0 or self.text_dim % self.text_heads:
            raise ValueError(f"CLIPConfig vocab_size={self.vocab_size}, text_dim={self.text_dim}, text_heads="
                             f"{self.text_heads} are not valid; valid: vocab_size >= 0 (0: frozen features), "
                             "text_dim a multiple of text_heads")
        if not 0.01 <= self.init_temperature < math.inf:
            raise ValueError(f"init_temperature={self.init_temperature!r} is not valid; valid: a number >= 0.01 "
                             "(the logit scale 1 / temperature is at most 100)")


class ImageTower(nn.Module):
    """(B, C, S, S) -> (B, embed_dim), not normalised."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        w = config.channels
        self.conv = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.proj = nn.Sequential(nn.Linear(2 * w * 16, 4 * w), nn.SiLU(), nn.Linear(4 * w, config.embed_dim))

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.conv(images))


class TextTower(nn.Module):
    """context (B, M) ids or (B, M, text_in_dim) features, mask (B, M) -> (B, embed_dim)."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.encoder = None
        width = config.text_in_dim
        if config.vocab_size:
            self.encoder = TextTransformer(config.vocab_size, config.text_dim, config.text_depth, config.text_heads,
                                           config.context_len)
            width = config.text_dim
        self.proj = nn.Linear(width, config.embed_dim)

    def forward(self, context: Tensor, context_mask: Tensor) -> Tensor:
        if self.encoder is not None:
            if context.dtype != torch.long:
                raise TypeError(f"this text tower embeds token ids: context must be int64, got {context.dtype}")
            context = self.encoder(context, context_mask)
        elif not context.is_floating_point():
            raise TypeError("this text tower reads a frozen encoder's features: context must be float (B, M, D)")
        return self.proj(masked_mean(context, context_mask))


class CLIP(nn.Module):
    """Both towers and the temperature; forward gives the normalised embeddings and the scale."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.text = TextTower(config)
        # shape (1,), not a scalar: FSDP2 shards every parameter along its first dimension
        self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / config.init_temperature)))

    def logit_scale(self) -> Tensor:
        """exp of the log scale clamped at log 100 (the gradient passes up to the bound); a scalar."""
        return self.log_logit_scale.clamp(max=MAX_LOG_LOGIT_SCALE).squeeze(0).exp()  # exp last: not a view

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """CLIP's clamp of the parameter itself, at most log 100."""
        self.log_logit_scale.clamp_(max=MAX_LOG_LOGIT_SCALE)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> unit vectors (B, embed_dim)."""
        return F.normalize(self.image(images), dim=-1)

    def encode_text(self, context: Tensor, context_mask: Tensor) -> Tensor:
        """(B, M) ids or (B, M, D) features, mask (B, M) -> unit vectors (B, embed_dim)."""
        return F.normalize(self.text(context, context_mask), dim=-1)

    def encode_text_tokens(self, context: Tensor, context_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The text tower's per-token outputs before pooling and projection: (tokens (B, M, W),
        mask (B, M)); W = text_dim (the trainable transformer's outputs) or text_in_dim (the
        frozen encoder's features, passed through).  unCLIP's prior reads these."""
        tower = self.text
        if tower.encoder is not None:
            if context.dtype != torch.long:
                raise TypeError(f"this text tower embeds token ids: context must be int64, got {context.dtype}")
            return tower.encoder(context, context_mask), context_mask
        if not context.is_floating_point():
            raise TypeError("this text tower reads a frozen encoder's features: context must be float (B, M, D)")
        return context, context_mask

    @property
    def text_token_width(self) -> int:
        """W of `encode_text_tokens`."""
        return self.config.text_dim if self.config.vocab_size else self.config.text_in_dim

    def forward(self, images: Tensor, context: Tensor, context_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(context, context_mask), self.logit_scale()
