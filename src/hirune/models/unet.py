"""The DDPM / ADM UNet (Ho et al. 2020; Dhariwal & Nichol 2021, "guided diffusion").

    x (B, C, H, W) -> input conv -> encoder: per level, `num_res_blocks` ResBlocks (+ self-
    attention at the levels in `attention_resolutions`), then a stride-2 downsample (all
    levels but the last) -> middle: ResBlock, attention, ResBlock -> decoder: per level,
    `num_res_blocks + 1` ResBlocks, each on [h, skip] concatenated, (+ attention), then an
    upsample to the next skip's exact size -> GroupNorm, SiLU, zero-initialised output conv.

Conditioning.  The network is called `model(x, t, y=None)` (the protocol of
`hirune.Denoiser`).  t: (B,) float32 in the process's own time units; it is multiplied by
`time_scale` before the sinusoidal embedding (`hirune.nn.timestep_embedding`, float32 even
under autocast).  Use time_scale = 1 for discrete schedules (t = 0..T-1) and e.g. 1000 for
SDEs and flows (t in [0, 1]), whose times the sinusoids would otherwise barely resolve:
the fastest frequency is 1 rad per unit of time.  y: (B,) int64 class labels in
[0, num_classes]; the label `num_classes` is the null label of classifier-free guidance,
and y=None means all-null.  Time and class embeddings are added and reach every ResBlock,
either added after its first conv (DDPM) or, with `use_scale_shift_norm`, as
GroupNorm(h) * (1 + scale) + shift (ADM's adaptive GroupNorm, a FiLM layer).

Odd sizes.  A downsample maps n pixels to ceil(n / 2) (conv stride 2, padding 1), and an
upsample goes to the exact size of the skip it is concatenated with, so 28 -> 14 -> 7 -> 4
-> 7 -> 14 -> 28 works as well as powers of two.

Init ("zero" as in ADM): the last conv of every residual branch, the output projection
of every attention block and the output conv start at zero, so each block starts as the
identity and the initial output is exactly 0.  Everything else keeps PyTorch's default
initialisation, as in ADM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..nn import (ContextEmbedding, Conv1x1, CrossAttention2d, MicroEmbedding, SelfAttention2d, add_micro,
                  check_context, check_word_fields, group_norm, timestep_embedding, upsample_conv, upsample_nearest,
                  zero_)
from .config import check_fields


@dataclass(frozen=True)
class UNetConfig:
    """in_channels: channels of x.  out_channels: of the prediction (default in_channels);
        learned_sigma doubles them: (prediction, variance interpolation v), Improved DDPM.
    channels: base width; level i has channels * channel_mult[i] channels.
    attention_resolutions: *downsample factors* of the levels with self-attention
        (1 = input resolution, 2 = half, ...), as in ADM's UNetModel, so one config
        serves any image size: (4,) at 28 x 28 is attention at 7 x 7.
    head_channels: channels per attention head (a level narrower than this uses one head).
    resblock_updown: resample inside ResBlocks (BigGAN style) instead of with a conv.
    use_scale_shift_norm: FiLM conditioning, GroupNorm(h) * (1 + scale) + shift.  Without it
        (DDPM), GroupNorm(h + emb): a level with as many channels as groups normalises each
        channel alone and so removes emb: its ResBlocks ignore t (the tiny size's 32-channel
        level, as in diffusers' twin; tests/models/test_unet.py).
    time_scale: t is multiplied by it before the embedding (see the module docstring).
    use_checkpoint: recompute each block in the backward pass (torch.utils.checkpoint).
    context_dim: text conditioning: width of the context tokens; a cross-attention block
        follows every self-attention, and the pooled context joins the time embedding
        (`hirune.nn.context`).  context_vocab: the network embeds token ids itself with a
        small trainable text transformer of that vocabulary (else the context is a frozen
        encoder's float embeddings).  context_len: the most tokens it embeds.
    word_vocab, word_dim, word_len: two text encoders at once (SDXL; `hirune.nn.context`):
        beside a frozen encoder's float context, `words` (B, W) token ids of that vocabulary,
        embedded at width word_dim (at most word_len tokens), projected to context_dim and
        appended to the context's tokens; the pooled vector reads the context alone.
    embed_dim: unCLIP's decoder (DALL-E 2 sec. 2.1, after GLIDE): the width D of a CLIP image
        embedding `image_embed` (B, D).  A linear projection of it joins the time embedding
        (as the pooled text does), and another makes `embed_tokens` extra context tokens for
        the cross-attention blocks: appended after the caption's tokens on a text-conditioned
        UNet, else the only context (cross-attention blocks are then built for them, with
        tokens of width D: the key and value projections take them to each level's width).
        The null condition of classifier-free guidance is the zero embedding.
    cond_channels: super-resolution (Imagen, SR3): channels of the upsampled low-resolution
        image `low_res` (B, cond_channels, H, W), concatenated to x before the input conv.
    aug_level: noise conditioning augmentation (Imagen, CDM): a second sinusoidal MLP embeds
        the level a (B,) in [0, 1] the low-resolution image was noised to, added to the time
        embedding.  Its last layer starts at zero, so a fresh network is the same function of
        (x, t, low_res) whatever a is (the adaLN-Zero / ControlNet argument: a new input
        starts as a no-op and learns how much to matter).
    micro_conditions: SDXL's micro-conditioning: the number K of scalars `micro` (B, K) per image
        (hirune's six: original height, width, crop top, left, target height, width), each
        embedded by sinusoids of width `channels` and mapped to the time embedding's width by an
        MLP whose last layer starts at zero (`hirune.nn.MicroEmbedding`), added to it.

    Keep the lowest level at 2 x 2 pixels or more: over a 1 x 1 map, a GroupNorm with one
    channel per group outputs its bias alone (8 x 8 inputs: at most three levels).
    """

    in_channels: int = 3
    out_channels: int | None = None
    learned_sigma: bool = False
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2,)
    head_channels: int = 64
    dropout: float = 0.0
    num_classes: int | None = None
    resblock_updown: bool = False
    use_scale_shift_norm: bool = True
    time_scale: float = 1.0
    use_checkpoint: bool = False
    context_dim: int | None = None
    context_vocab: int | None = None
    context_len: int = 32
    word_vocab: int | None = None
    word_dim: int = 128
    word_len: int = 16
    embed_dim: int | None = None
    embed_tokens: int = 4
    cond_channels: int = 0
    aug_level: bool = False
    micro_conditions: int = 0

    def __post_init__(self):
        check_fields(self)
        for name in ("in_channels", "out_channels", "channels", "head_channels", "num_classes", "context_dim",
                     "context_vocab", "embed_dim", "embed_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"UNetConfig.{name} must be positive, got {value}")
        check_word_fields(self)
        if self.cond_channels < 0 or self.micro_conditions < 0:
            raise ValueError(f"UNetConfig.cond_channels and micro_conditions must be >= 0, got {self.cond_channels} "
                             f"and {self.micro_conditions}")
        if self.num_res_blocks < 0:
            raise ValueError(f"UNetConfig.num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError("UNetConfig.channel_mult must be non-empty and positive, "
                             f"got {self.channel_mult}")
        factors = self.downsample_factors
        if not set(self.attention_resolutions) <= set(factors):
            raise ValueError(f"UNetConfig.attention_resolutions {self.attention_resolutions} are "
                             f"downsample factors and must be among the levels' {factors} "
                             "(pixel sizes are not accepted: use image_size // pixels)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        for mult in self.channel_mult:
            width = self.channels * mult
            if width > self.head_channels and width % self.head_channels:
                raise ValueError(f"UNetConfig.head_channels={self.head_channels} does not divide "
                                 f"the {width} channels of a level")

    @property
    def cross_dim(self) -> int | None:
        """The width of the tokens cross-attention reads: the caption's, else the image
        embedding's (its tokens alone), else None (no cross-attention)."""
        return self.context_dim or self.embed_dim

    @property
    def downsample_factors(self) -> tuple[int, ...]:
        return tuple(2**i for i in range(len(self.channel_mult)))

    @property
    def output_channels(self) -> int:
        out = self.out_channels or self.in_channels
        return 2 * out if self.learned_sigma else out


# Named sizes: architecture only; in/out channels, classes, dropout and time_scale are
# set per data set.  Parameter counts for in = out = 1 channel, unconditional / for
# in = out = 3 channels.
UNET_SIZES: dict[str, dict] = {
    # The architecture of diffusers' UNet2DModel(block_out_channels=(32, 64, 64),
    # layers_per_block=2, attention in the lowest level): 28 -> 14 -> 7, attention at 7 x 7,
    # the same 1,623,169 parameters at 1 channel (1,624,323 at 3).  One head of 64 channels
    # (ADM's choice) where diffusers has 8 heads of 8: same parameters, cheaper on a CPU.
    "tiny": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(4,), head_channels=64, use_scale_shift_norm=False),
    # Four levels, FiLM conditioning, attention at 1/2 and 1/4 (16 and 8 pixels at 32 x 32).
    # 9,922,753 / 9,925,059.
    "small": dict(channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                  attention_resolutions=(2, 4), head_channels=64),
    # DDPM's CIFAR-10 model (35.7 M in the paper): attention at 16 x 16 for 32 x 32 images.
    # 35,741,697 / 35,746,307.
    "base": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                 attention_resolutions=(2,), head_channels=128, use_scale_shift_norm=False),
}


def resample(x: Tensor, direction: str | None, size: torch.Size | None = None) -> Tensor:
    """Parameter-free resampling inside ResBlocks: 2x2 average pooling (ceil(n / 2)
    pixels) or nearest upsampling to `size` (default twice the input)."""
    if direction == "down":
        return F.avg_pool2d(x, 2, ceil_mode=True)
    if direction == "up":
        return upsample_nearest(x, size)
    return x


class Downsample(nn.Module):
    """3x3 conv with stride 2: n -> ceil(n / 2) pixels."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling to `size` (the skip's size; default 2x), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: torch.Size | None = None) -> Tensor:
        return upsample_conv(x, self.conv, size)  # one transposed conv where exact (hirune.nn.conv)


class ResBlock(nn.Module):
    """x + branch(x, emb), with a 1x1 conv on x when the channel count changes.

    branch: GroupNorm, SiLU, [resample], conv, + embedding (or FiLM), GroupNorm, SiLU,
    dropout, zero-initialised conv.  emb: (B, emb_channels), already through SiLU.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float,
                 scale_shift_norm: bool, resample: str | None = None):
        super().__init__()
        self.scale_shift_norm, self.resample = scale_shift_norm, resample
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, (2 if scale_shift_norm else 1) * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else Conv1x1(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor, size: torch.Size | None = None) -> Tensor:
        h = F.silu(self.norm1(x))
        if self.resample:
            h, x = resample(h, self.resample, size), resample(x, self.resample, size)
        h = self.conv1(h)
        e = self.emb_proj(emb)[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ImageEmbedding(nn.Module):
    """unCLIP's decoder condition: a CLIP image embedding (B, D) -> (a vector added to the
    time embedding (B, emb_dim), `tokens` context tokens (B, tokens, width))."""

    def __init__(self, embed_dim: int, emb_dim: int, tokens: int, width: int):
        super().__init__()
        self.tokens, self.width = tokens, width
        self.to_emb = nn.Linear(embed_dim, emb_dim)
        self.to_tokens = nn.Linear(embed_dim, tokens * width)

    def forward(self, image_embed: Tensor) -> tuple[Tensor, Tensor]:
        return self.to_emb(image_embed), self.to_tokens(image_embed).view(len(image_embed), self.tokens, self.width)


class Step(nn.Sequential):
    """A run of layers called with what each needs: ResBlocks the embedding (and the size
    to upsample to), Upsamples the size, cross-attention the context, everything else the
    features alone."""

    def forward(self, h: Tensor, emb: Tensor, size: torch.Size | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, size)
            elif isinstance(layer, Upsample):
                h = layer(h, size)
            elif isinstance(layer, CrossAttention2d):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    """model(x, t, y=None) -> (B, config.output_channels, H, W) for x: (B, C, H, W),
    t: (B,) float32, y: (B,) int64 or None.  See the module docstring."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        emb_ch = 4 * c.channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        # one row per class plus the null label (index num_classes) for classifier-free guidance
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_ch) if c.num_classes else None
        self.context = ContextEmbedding(c.context_dim, emb_ch, c.context_vocab, c.context_len, c.word_vocab, c.word_dim,
                                        c.word_len) if c.context_dim else None
        self.clip_embed = ImageEmbedding(c.embed_dim, emb_ch, c.embed_tokens, c.cross_dim) if c.embed_dim else None
        # noise conditioning augmentation: the level a, embedded like t, zero at the start
        self.aug_embed = nn.Sequential(nn.Linear(c.channels, emb_ch), nn.SiLU(), zero_(nn.Linear(emb_ch, emb_ch))) \
            if c.aug_level else None
        self.micro_embed = MicroEmbedding(c.micro_conditions, c.channels, emb_ch) if c.micro_conditions else None

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_ch, c.dropout, c.use_scale_shift_norm, resample)

        def attention(ch: int) -> list[nn.Module]:
            heads = max(1, ch // c.head_channels)
            cross = [CrossAttention2d(ch, c.cross_dim, heads)] if c.cross_dim else []
            return [SelfAttention2d(ch, heads), *cross]

        ch = c.channels
        self.input_conv = nn.Conv2d(c.in_channels + c.cond_channels, ch, 3, padding=1)
        self.down, skip_channels, factor = nn.ModuleList(), [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, c.channels * mult)]
                ch = c.channels * mult
                if factor in c.attention_resolutions:
                    layers += attention(ch)
                self.down.append(Step(*layers))
                skip_channels.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(Step(res(ch, ch, "down") if c.resblock_updown else Downsample(ch)))
                skip_channels.append(ch)
                factor *= 2

        self.middle = Step(res(ch, ch), *attention(ch), res(ch, ch))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), c.channels * mult)]
                ch = c.channels * mult
                if factor in c.attention_resolutions:
                    layers += attention(ch)
                if level > 0 and i == c.num_res_blocks:
                    layers.append(res(ch, ch, "up") if c.resblock_updown else Upsample(ch))
                    factor //= 2
                self.up.append(Step(*layers))

        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), zero_(nn.Conv2d(ch, c.output_channels, 3, padding=1)))

    def embed(self, t: Tensor, y: Tensor | None, pooled: Tensor | None = None) -> Tensor:
        """SiLU(time MLP(sinusoids(t * time_scale)) + class embedding(y) [+ pooled text]):
        (B, 4 * channels)."""
        freqs = timestep_embedding(t * self.config.time_scale, self.config.channels)  # float32
        emb = self.time_embed(freqs.to(self.input_conv.weight.dtype))  # no-op but for half weights
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes, dtype=torch.long)
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("class labels given to an unconditional UNet (num_classes=None)")
        return F.silu(emb if pooled is None else emb + pooled)

    def _with_low_res(self, x: Tensor, low_res: Tensor | None) -> Tensor:
        """x with the low-resolution image's channels appended (a super-resolution UNet)."""
        k = self.config.cond_channels
        if (low_res is not None) != (k > 0):
            raise ValueError(f"low_res goes with a UNet built with cond_channels > 0, and such a UNet needs it "
                             f"(low_res given: {low_res is not None}, cond_channels={k})")
        if low_res is None:
            return x
        if low_res.shape[1] != k or low_res.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"low_res of shape {tuple(low_res.shape)} does not fit x {tuple(x.shape)} "
                             f"with cond_channels={k}; upsample it to x's size first")
        return torch.cat([x, low_res.to(x.dtype).expand(len(x), -1, -1, -1)], dim=1)

    def run(self, step: Step, h: Tensor, emb: Tensor, size: torch.Size | None = None, *ctx) -> Tensor:
        if self.config.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(step, h, emb, size, *ctx, use_reentrant=False)
        return step(h, emb, size, *ctx)

    def _with_image_embed(self, image_embed: Tensor | None, context: Tensor | None, mask: Tensor | None,
                          pooled: Tensor | None) -> tuple[tuple, Tensor | None]:
        """unCLIP: the embedding's projection added to `pooled`, its tokens after the caption's
        (mask True) or alone; returns (the cross-attention's (context, mask) or (), pooled)."""
        c = self.config
        if (image_embed is not None) != (self.clip_embed is not None):
            raise ValueError("image_embed goes with a UNet built with embed_dim (an unCLIP decoder), and such a UNet "
                             f"needs it (image_embed given: {image_embed is not None}, embed_dim={c.embed_dim}; "
                             "the null condition is the zero embedding)")
        if image_embed is None:
            return ((context, mask) if context is not None else ()), pooled
        if image_embed.dim() != 2 or image_embed.shape[1] != c.embed_dim:
            raise ValueError(f"image_embed of shape {tuple(image_embed.shape)} is not valid; valid: (B, {c.embed_dim})")
        vector, tokens = self.clip_embed(image_embed.to(self.input_conv.weight.dtype))
        pooled = vector if pooled is None else pooled + vector
        if context is None:
            return (tokens, None), pooled
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        ones = torch.ones(tokens.shape[:2], dtype=torch.bool, device=mask.device)
        return (torch.cat([context, tokens.to(context.dtype)], 1), torch.cat([mask, ones], 1)), pooled

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, image_embed: Tensor | None = None, low_res: Tensor | None = None,
                aug_level: Tensor | None = None, micro: Tensor | None = None, words: Tensor | None = None,
                words_mask: Tensor | None = None) -> Tensor:
        """context (B, M, context_dim) float or (B, M) token ids, context_mask (B, M) bool:
        the text condition of a text-conditioned UNet (see `UNetConfig.context_dim`); words
        (B, W) int64, words_mask (B, W) bool: the second encoder's (`UNetConfig.word_vocab`).
        image_embed (B, embed_dim): an unCLIP decoder's CLIP image embedding (`embed_dim`).
        low_res (B, cond_channels, H, W), aug_level (B,): a super-resolution UNet's
        upsampled (and augmented) low-resolution image and its augmentation level.
        micro (B, micro_conditions): SDXL's micro-conditions (`UNetConfig.micro_conditions`)."""
        check_context(self.context is not None, context, "UNet")
        x = self._with_low_res(x, low_res)
        pooled = None
        if self.context is not None:
            context, context_mask, pooled = self.context(context, context_mask, words, words_mask)
        elif words is not None:
            raise ValueError("words given to a UNet without text conditioning (context_dim=None)")
        ctx, pooled = self._with_image_embed(image_embed, context, context_mask, pooled)
        if (aug_level is not None) != (self.aug_embed is not None):
            raise ValueError("aug_level goes with a UNet built with aug_level=True, and such a UNet needs it"
                             f" (aug_level given: {aug_level is not None}, aug_level={self.config.aug_level})")
        if aug_level is not None:  # a in [0, 1] seen as t in [0, 1000), like the time embedding
            freqs = timestep_embedding(aug_level.float().expand(len(t)) * 1000.0, self.config.channels)
            aug = self.aug_embed(freqs.to(self.input_conv.weight.dtype))
            pooled = aug if pooled is None else pooled + aug
        pooled = add_micro(self.micro_embed, micro, pooled, len(t), "UNet")  # sizes and crops, with the pooled text
        emb = self.embed(t, y, pooled)
        h = self.input_conv(x)
        skips = [h]
        for step in self.down:
            h = self.run(step, h, emb, None, *ctx)
            skips.append(h)
        h = self.run(self.middle, h, emb, None, *ctx)
        for step in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = self.run(step, h, emb, skips[-1].shape[-2:] if skips else None, *ctx)
        return self.out(h)
