"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models").

    tokens = [time token, class token (when num_classes is set), patch tokens] + learned
    positions -> in_blocks (depth // 2) -> mid_block -> out_blocks (depth // 2) ->
    LayerNorm -> linear to p * p * out_channels per patch token -> unpatchify -> 3x3 conv

Everything is a token (sec. 3): the time enters as one token, the sinusoids of
t * time_scale at width D themselves (the paper's models use no time MLP,
`mlp_time_embed=False`), and the class label as one more, an embedding with a null row.
The blocks are plain pre-LN transformer blocks, x + Attention(LN(x)), x + MLP(LN(x)).
Long skips (sec. 3.1): the output of in-block i is kept and, last in first out, the
out-block that mirrors it starts with Linear(concat[h, skip]) from 2D back to D.  After the
patches are put back in place, a 3x3 conv (sec. 3.1, "the extra convolutional block")
smooths the image; `conv=False` leaves it out.  `long_skip=False` drops the long skips (the
out-blocks are plain blocks): the paper's ablation (fig. 2(a)), measured by `hirune reproduce uvit`.

`depth` counts every block, as the paper does: in = out = depth // 2 and one mid block, so
depth is odd (U-ViT-S has 13 = 6 + 1 + 6).  The blocks live in the top-level ModuleLists
`in_blocks` and `out_blocks`; the mid block is a plain module of the same class, which
`hirune.models.blocks` shards as one more unit.

Init as in the paper's code: truncated normal(0.02) linears, zero biases, PyTorch's
defaults elsewhere.  The learned position table is where hirune departs from it by
default (`pos_init`): the patch tokens' rows start as DiT's fixed 2-D sin-cos table (the
time, class and caption rows keep the truncated normal), and all of it is still learned.
Started at std 0.02, the rows of an all-background image's patches differ by 2% of the
patch embedding, so for hundreds of steps the network barely knows where a token lies;
uvit-mnist5k after 1500 steps, seeds 0, 1, 2: Frechet distance of 500 samples 152.8,
127.2, 148.7 with the paper's start, 90.6, 55.1, 138.3 with sin-cos (dit-mnist5k, seed 0:
60.4); `pos_init="trunc_normal"` is the paper's.  hirune's
other choice, like DiT's zero final linear: the
patch linear `decoder_pred` and the 3x3 conv's bias start at zero, so the initial output is
exactly 0, while the conv keeps its random weights.  (Zeroing the conv instead, as ADM
zeroes its output conv, starves the network: with one output channel every gradient then
passes through nine zero weights.  uvit-mnist5k, 700 steps: loss 0.100 with the conv
zeroed, 0.063 with this init, 0.055 with the paper's (no zero output at all); Frechet
distance of 500 samples 165.8, 158.9, 157.8.)  The protocol (`model(x, t, y=None)`, null
label, learned_sigma) is the UNet's.

Text (U-ViT's MS-COCO model, sec. 4.3): with `context_dim` set, the caption's M tokens
(a frozen encoder's outputs, or token ids embedded by the small trainable text transformer
of `hirune.nn.context`) go through a linear to D and join the sequence after the time
token: [time, M text tokens, patch tokens].  Padded caption tokens are masked out as keys
in every self-attention, so they change nothing; their own outputs are dropped with the
time token's.  No pooled vector and no cross-attention: attention over the one sequence is
how U-ViT reads the condition.  With two text encoders (`word_vocab`, `hirune.nn.context`)
the word_len word tokens, projected to context_dim, follow the M context tokens:
[time, M + word_len text tokens, patch tokens].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import (Attention, ContextEmbedding, PatchEmbed, check_context, check_patch_size, check_word_fields,
                  sincos_position_embedding, timestep_embedding, unpatchify, zero_)
from ..nn.attention import init_linears_
from ..nn.context import context_plan
from ..nn.parallel import attention_plan, check_split, check_tokens, mlp_plan
from .config import check_fields


# the learned position table's start: the patch rows as the 2-D sin-cos table (hirune), or
# all rows truncated normal(0.02) (the paper's code)
POS_INITS = ("sincos", "trunc_normal")


@dataclass(frozen=True)
class UViTConfig:
    """Fields as in `DiTConfig`; depth: all blocks (odd: in, mid, out).  conv: the extra
    3x3 conv on the output image.  U-ViT's attention has no qkv bias.  context_dim,
    context_vocab, context_len: text conditioning as in `UNetConfig`, read as context_len
    extra tokens (see the module docstring).  word_vocab, word_dim, word_len: a second text
    encoder's words, as in `UNetConfig`, read as word_len more tokens.  pos_init: the start
    of the learned position table, one of `POS_INITS`.  long_skip: the long skips (False: the
    ablation without them)."""

    in_channels: int = 3
    out_channels: int | None = None
    learned_sigma: bool = False
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 512
    depth: int = 13
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    time_scale: float = 1.0
    qk_norm: bool = False
    conv: bool = True
    context_dim: int | None = None
    context_vocab: int | None = None
    context_len: int = 32
    word_vocab: int | None = None
    word_dim: int = 128
    word_len: int = 16
    pos_init: str = "sincos"
    long_skip: bool = True

    def __post_init__(self):
        check_fields(self)
        if self.pos_init not in POS_INITS:
            raise ValueError(f"UViTConfig.pos_init must be one of {list(POS_INITS)}, got {self.pos_init!r}")
        if self.pos_init == "sincos" and self.hidden_size % 4:
            raise ValueError(f"UViTConfig.pos_init='sincos' needs hidden_size divisible by 4, got "
                             f"{self.hidden_size}; use pos_init='trunc_normal'")
        for name in ("in_channels", "out_channels", "image_size", "patch_size", "hidden_size", "depth",
                     "num_heads", "num_classes", "context_dim", "context_vocab", "context_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"UViTConfig.{name} must be positive, got {value}")
        check_word_fields(self)
        check_patch_size(self.image_size, self.patch_size)
        if self.depth % 2 == 0:
            raise ValueError(f"UViTConfig.depth counts in + mid + out blocks and must be odd, got {self.depth}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"UViTConfig.hidden_size={self.hidden_size} does not split into "
                             f"num_heads={self.num_heads} heads")
        if self.mlp_ratio <= 0:
            raise ValueError(f"UViTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def output_channels(self) -> int:
        out = self.out_channels or self.in_channels
        return 2 * out if self.learned_sigma else out


# Named sizes: the paper's Table 1 (U-ViT-S, -M, -L, -H) and hirune's "tiny" for a CPU;
# the patch size is chosen per data set (default 2: 16 tokens on the 8 x 8 digits; use
# patch_size=4 for 49 tokens on 28 x 28 MNIST).  Parameters in the paper's settings:
# small on CIFAR-10 (32 x 32 x 3, patch 2, unconditional) 44,255,328 (paper: 44M); mid on
# ImageNet 64 (patch 4, 1000 classes) 130,941,060 (131M); large and huge on ImageNet 256
# latents (32 x 32 x 4, patch 2, 1000 classes) 286,763,172 (287M) and 500,832,164 (501M);
# tiny on the digits (1 channel, patch 2, unconditional): 3,337,166.
UVIT_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=192, depth=7, num_heads=3),
    "small": dict(hidden_size=512, depth=13, num_heads=8),
    "mid": dict(hidden_size=768, depth=17, num_heads=12),
    "large": dict(hidden_size=1024, depth=21, num_heads=16),
    "huge": dict(hidden_size=1152, depth=29, num_heads=16),
}


class UViTBlock(nn.Module):
    """Pre-LN transformer block on x (B, L, D); with `skip`, it first maps
    concat[x, skip] (B, L, 2D) back to D (U-ViT's long skip)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool, skip: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, skip: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """mask: (B, L) bool key padding mask (text runs), True = a real token."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """model(x, t, y=None) -> (B, config.output_channels, H, W) for x: (B, C, H, W) with
    H = W = image_size, t: (B,) float32, y: (B,) int64 or None.  See the module docstring."""

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = c = config
        D, p, out = c.hidden_size, c.patch_size, c.output_channels
        self.patch_embed = PatchEmbed(c.in_channels, D, p)
        # one row per class plus the null label (index num_classes) for classifier-free guidance
        self.class_embed = nn.Embedding(c.num_classes + 1, D) if c.num_classes else None
        self.context = ContextEmbedding(c.context_dim, None, c.context_vocab, c.context_len, c.word_vocab, c.word_dim,
                                        c.word_len) if c.context_dim else None
        self.context_embed = nn.Linear(c.context_dim, D) if c.context_dim else None
        # tokens before the patches: time, the class (when num_classes), the caption's context_len tokens
        # (and word_len word tokens with a second text encoder)
        self.text_tokens = (c.context_len + (c.word_len if c.word_vocab else 0)) if c.context_dim else 0
        self.extras = 1 + (1 if c.num_classes else 0) + self.text_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + (c.image_size // p) ** 2, D))

        def block(skip: bool = False) -> UViTBlock:
            return UViTBlock(D, c.num_heads, c.mlp_ratio, c.qk_norm, skip)

        self.in_blocks = nn.ModuleList(block() for _ in range(c.depth // 2))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block(skip=c.long_skip) for _ in range(c.depth // 2))
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * out)
        self.final_conv = nn.Conv2d(out, out, 3, padding=1) if c.conv else None
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The paper's init, the patch positions as sin-cos (`pos_init`), then a zero
        output (see the module docstring)."""
        c = self.config
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if c.pos_init == "sincos":
            side = c.image_size // c.patch_size
            self.pos_embed[0, self.extras:] = sincos_position_embedding(c.hidden_size, side, side)
        init_linears_(self, lambda w: nn.init.trunc_normal_(w, std=0.02))  # q, k, v drawn as one fused qkv
        zero_(self.decoder_pred)
        if self.final_conv is not None:
            nn.init.zeros_(self.final_conv.bias)

    def tensor_parallel_plan(self, tp: int, sp: bool = False) -> list[tuple[str, str]]:
        """Megatron's split of every block (`hirune.nn.parallel`): attention by heads, the MLP
        column then row; under sp the blocks run on 1 / tp of the tokens (time, class and text
        tokens included), with the LayerNorms and the long skips' Linear on the rank's tokens.
        The embeddings, the final norm and the output layer stay whole."""
        c = self.config
        check_split(tp, "U-ViT", num_heads=c.num_heads, hidden_size=c.hidden_size,
                    mlp_width=int(c.hidden_size * c.mlp_ratio))
        if sp:
            check_tokens(tp, self.extras + (c.image_size // c.patch_size) ** 2, "U-ViT")
        names = ([f"in_blocks.{i}" for i in range(len(self.in_blocks))] + ["mid_block"]
                 + [f"out_blocks.{i}" for i in range(len(self.out_blocks))])
        plan = [(names[0], "sequence_start"), (names[-1], "sequence_end")]
        for name in names:
            plan += attention_plan(f"{name}.attn", c.qk_norm) + mlp_plan(f"{name}.mlp")
            plan += [(f"{name}.norm1", "tokens"), (f"{name}.norm2", "tokens")]
            if name.startswith("out_blocks") and c.long_skip:
                plan.append((f"{name}.skip_linear", "tokens"))
        return plan + context_plan(self.context, tp)  # the tiny text encoder, when trained here

    def tokens(self, x: Tensor, t: Tensor, y: Tensor | None, context: Tensor | None = None) -> Tensor:
        """[time token, class token, context tokens, patch tokens] (those that exist) + positions:
        (B, extras + N, D); context (B, context_len, context_dim) already embedded."""
        D = self.config.hidden_size
        time = timestep_embedding(t * self.config.time_scale, D)                  # float32
        tokens = [time.to(self.pos_embed.dtype)[:, None]]                         # no-op but for half weights
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes, dtype=torch.long)
            tokens.append(self.class_embed(y)[:, None])
        elif y is not None:
            raise ValueError("class labels given to an unconditional UViT (num_classes=None)")
        if context is not None:
            tokens.append(self.context_embed(context))
        tokens.append(self.patch_embed(x))
        return torch.cat(tokens, dim=1) + self.pos_embed

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, words: Tensor | None = None,
                words_mask: Tensor | None = None) -> Tensor:
        """context (B, context_len, context_dim) float or (B, context_len) token ids,
        context_mask (B, context_len) bool: the caption of a text-conditioned UViT; words
        (B, word_len) int64, words_mask (B, word_len) bool: the second encoder's (`word_vocab`)."""
        c, size = self.config, self.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"this UViT was built for {size} x {size} images, got {tuple(x.shape[-2:])}")
        check_context(self.context is not None, context, "UViT")
        mask = None
        if self.context is not None:
            if context.shape[1] != c.context_len:
                raise ValueError(f"this UViT reads captions of exactly {c.context_len} tokens (its position "
                                 f"table), got {context.shape[1]}")
            if words is not None and c.word_vocab and words.shape[1] != c.word_len:
                raise ValueError(f"this UViT reads exactly {c.word_len} word tokens (its position table), got "
                                 f"{words.shape[1]}")
            context, context_mask, _ = self.context(context, context_mask, words, words_mask)
            if context_mask is not None:       # every token but the padded caption tokens is a key
                mask = torch.ones(x.shape[0], self.extras + (size // c.patch_size) ** 2, dtype=torch.bool,
                                  device=x.device)
                first = self.extras - self.text_tokens
                mask[:, first:first + self.text_tokens] = context_mask
        elif words is not None:
            raise ValueError("words given to a UViT without text conditioning (context_dim=None)")
        h = self.tokens(x, t, y, context)
        skips = []
        for block in self.in_blocks:
            h = block(h, mask=mask)
            skips.append(h)
        h = self.mid_block(h, mask=mask)
        for block in self.out_blocks:
            h = block(h, skips.pop() if c.long_skip else None, mask)               # last in, first out
        patches = self.decoder_pred(self.norm(h))[:, self.extras:]                # drop time/class/text tokens
        out = unpatchify(patches, self.config.patch_size, size, size)
        return self.final_conv(out) if self.final_conv is not None else out
