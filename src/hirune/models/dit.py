"""DiT, the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers").

    x (B, C, H, W) -> patch embedding (p x p conv, stride p) + fixed 2-D sin-cos positions
    -> N = H W / p^2 tokens (B, N, D) -> `depth` DiT blocks -> final layer: adaLN, linear
    to p * p * out_channels per token -> unpatchify -> (B, out_channels, H, W)

Conditioning (sec. 3.2, "adaLN-Zero").  c = MLP(sinusoids(t * time_scale)) + embedding(y)
is a (B, D) vector; each block regresses six vectors from SiLU(c):

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))
    x = x + gate1 * Attention(LayerNorm(x) * (1 + scale1) + shift1)
    x = x + gate2 * MLP(LayerNorm(x) * (1 + scale2) + shift2)

with LayerNorms that have no parameters of their own.  The modulation linears start at
zero, so every gate is 0 and every block starts as the identity; the final layer (adaLN
shift and scale, then the output linear) also starts at zero, so the initial output is
exactly 0.

The protocol is the UNet's: `model(x, t, y=None)`, t: (B,) float32 in the process's time
units times `time_scale` before the float32 sinusoidal embedding (256 frequencies, as in
DiT), y: (B,) int64 labels in [0, num_classes] with the null label `num_classes` (y=None:
all null); learned_sigma doubles the output channels (prediction, variance interpolation
v).  Initialisation follows DiT's code: xavier-uniform linears (the patch embedding like
a linear), normal(0.02) time MLP and class table, zero adaLN modulations and final layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import (Attention, ContextEmbedding, CrossAttention, MicroEmbedding, PatchEmbed, add_micro, check_context,
                  check_patch_size, check_word_fields, sincos_position_embedding, timestep_embedding)
from ..nn import unpatchify
from ..nn.attention import init_linears_
from ..nn.context import context_plan
from ..nn.parallel import attention_plan, check_split, check_tokens, mlp_plan
from .config import check_fields

FREQUENCY_DIM = 256  # sinusoids of t fed to the time MLP (DiT's frequency_embedding_size)


@dataclass(frozen=True)
class DiTConfig:
    """in_channels: channels of x.  out_channels: of the prediction (default in_channels);
        learned_sigma doubles them: (prediction, variance interpolation v), Improved DDPM.
    image_size: H = W of x, fixed (the position table has (image_size / patch_size)^2 rows).
    patch_size: p; must divide image_size.  hidden_size: token width D.  depth: blocks.
    num_heads: attention heads (must divide D).  mlp_ratio: MLP width / D.
    num_classes: None for an unconditional model.  time_scale: as in `UNetConfig`.
    qk_norm: LayerNorm on each head's q and k (`hirune.nn.Attention`); not in DiT.
    context_dim, context_vocab, context_len: text conditioning as in `UNetConfig`: each
        block gets a cross-attention to the context after its self-attention (PixArt-alpha's
        placement; its output projection starts at zero), and the pooled context joins c.
    micro_conditions: SDXL's micro-conditioning as in `UNetConfig`: K scalars `micro` (B, K),
        each embedded by FREQUENCY_DIM sinusoids, mapped to D by an MLP whose last layer starts
        at zero (`hirune.nn.MicroEmbedding`), added to c.
    word_vocab, word_dim, word_len: a second text encoder's words, as in `UNetConfig`.
    """

    in_channels: int = 4
    out_channels: int | None = None
    learned_sigma: bool = False
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    time_scale: float = 1.0
    qk_norm: bool = False
    context_dim: int | None = None
    context_vocab: int | None = None
    context_len: int = 32
    micro_conditions: int = 0
    word_vocab: int | None = None
    word_dim: int = 128
    word_len: int = 16

    def __post_init__(self):
        check_fields(self)
        if self.micro_conditions < 0:
            raise ValueError(f"DiTConfig.micro_conditions must be >= 0, got {self.micro_conditions}")
        for name in ("in_channels", "out_channels", "image_size", "patch_size", "hidden_size", "depth",
                     "num_heads", "num_classes", "context_dim", "context_vocab"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"DiTConfig.{name} must be positive, got {value}")
        check_word_fields(self)
        check_patch_size(self.image_size, self.patch_size)
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} must split into num_heads="
                             f"{self.num_heads} heads and be divisible by 4 (2-D sin-cos positions)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def output_channels(self) -> int:
        out = self.out_channels or self.in_channels
        return 2 * out if self.learned_sigma else out


# Named sizes (DiT's Table 1), each with patch 2, 4 or 8: "S/2" ... "XL/8"; the name sets
# hidden_size, depth, num_heads and patch_size.  "T" (tiny, hirune's) trains on a CPU: the
# 8 x 8 digits at T/2 (16 tokens), 28 x 28 MNIST at T/2 or T/4 (196 or 49 tokens; 28 is not
# divisible by 8).  Trainable parameters for 32 x 32 x 4 latents, 1000 classes, learned
# sigma: S/2 32,865,056  B/2 130,315,808  L/2 457,840,672  XL/2 674,834,720 (the paper's
# Table 4: 33M, 130M, 458M, 675M; DiT's code also counts its frozen position table, 256 x D,
# and reports 675,129,632 for XL/2, which this count plus the table equals).  T/2 on the
# digits (1 channel, unconditional): 4,160,836.
_WIDTHS = {"T": (192, 6, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
DIT_SIZES: dict[str, dict] = {
    f"{name}/{patch}": dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=patch)
    for name, (hidden, depth, heads) in _WIDTHS.items() for patch in (2, 4, 8)
}


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) * (1 + scale) + shift, with shift and scale (B, D) shared by the tokens
    (one fused multiply-add: in eager mode a full pass over x fewer)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (DiT fig. 3): x (B, N, D), c (B, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool, context_dim: int | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        if context_dim:  # text: x = x + CrossAttention(LayerNorm(x), context)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = CrossAttention(dim, context_dim, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
                ) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate1[:, None], self.attn(modulate(self.norm1(x), shift1, scale1)))
        if context is not None:
            x = x + self.cross(self.norm_cross(x), context, context_mask)
        return torch.addcmul(x, gate2[:, None], self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale from SiLU(c)) then a linear to the patch features: (B, N, p p out)."""

    def __init__(self, dim: int, patch_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """model(x, t, y=None) -> (B, config.output_channels, H, W) for x: (B, C, H, W) with
    H = W = image_size, t: (B,) float32, y: (B,) int64 or None.  See the module docstring.
    The blocks are the top-level ModuleList `blocks` (sharded one by one by FSDP2)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        D, p = c.hidden_size, c.patch_size
        self.patch_embed = PatchEmbed(c.in_channels, D, p)
        grid = c.image_size // p
        # fixed, recomputed from the config: not a parameter and not in the state dict
        self.register_buffer("pos_embed", sincos_position_embedding(D, grid, grid)[None], persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(FREQUENCY_DIM, D), nn.SiLU(), nn.Linear(D, D))
        # one row per class plus the null label (index num_classes) for classifier-free guidance
        self.class_embed = nn.Embedding(c.num_classes + 1, D) if c.num_classes else None
        self.context = ContextEmbedding(c.context_dim, D, c.context_vocab, c.context_len, c.word_vocab, c.word_dim,
                                        c.word_len) if c.context_dim else None
        self.blocks = nn.ModuleList(DiTBlock(D, c.num_heads, c.mlp_ratio, c.qk_norm, c.context_dim)
                                    for _ in range(c.depth))
        self.final_layer = FinalLayer(D, p * p * c.output_channels)
        self.micro_embed = MicroEmbedding(c.micro_conditions, FREQUENCY_DIM, D) if c.micro_conditions else None
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation (see the module docstring); the initial output is exactly 0."""
        init_linears_(self, nn.init.xavier_uniform_)  # q, k, v drawn as the one (3D, D) matrix of DiT's qkv
        self.patch_embed.init_like_linear()
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        crosses = [block.cross.proj for block in self.blocks if hasattr(block, "cross")]
        for layer in [block.adaLN_modulation[-1] for block in self.blocks] + crosses + [
                self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.micro_embed is not None:  # starts as a no-op (see MicroEmbedding)
            self.micro_embed.zero_last_()

    def tensor_parallel_plan(self, tp: int, sp: bool = False) -> list[tuple[str, str]]:
        """Megatron's split of every block (`hirune.nn.parallel`): attention by heads, the MLP
        column then row, the adaLN modulation's weights sharded and its output gathered; under
        sp the blocks run on 1 / tp of the tokens.  Embeddings and the final layer stay whole."""
        c = self.config
        check_split(tp, "DiT", num_heads=c.num_heads, hidden_size=c.hidden_size,
                    mlp_width=int(c.hidden_size * c.mlp_ratio))
        if sp:
            check_tokens(tp, (c.image_size // c.patch_size) ** 2, "DiT")
        plan = [("blocks.0", "sequence_start"), (f"blocks.{c.depth - 1}", "sequence_end")]
        for i, block in enumerate(self.blocks):
            plan += attention_plan(f"blocks.{i}.attn", c.qk_norm) + mlp_plan(f"blocks.{i}.mlp")
            plan.append((f"blocks.{i}.adaLN_modulation.1", "colwise_gather"))
            if hasattr(block, "cross"):
                plan += [(f"blocks.{i}.norm_cross", "tokens")] + attention_plan(f"blocks.{i}.cross", c.qk_norm)
        return plan + context_plan(self.context, tp)  # the tiny text encoder, when trained here

    def embed(self, t: Tensor, y: Tensor | None, pooled: Tensor | None = None) -> Tensor:
        """c = time MLP(sinusoids(t * time_scale)) + class embedding(y) [+ pooled text]: (B, D)."""
        freqs = timestep_embedding(t * self.config.time_scale, FREQUENCY_DIM)  # float32
        c = self.time_embed(freqs.to(self.time_embed[0].weight.dtype))        # no-op but for half weights
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes, dtype=torch.long)
            c = c + self.class_embed(y)
        elif y is not None:
            raise ValueError("class labels given to an unconditional DiT (num_classes=None)")
        return c if pooled is None else c + pooled

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, micro: Tensor | None = None, words: Tensor | None = None,
                words_mask: Tensor | None = None) -> Tensor:
        """context (B, M, context_dim) float or (B, M) token ids, context_mask (B, M) bool:
        the text condition of a text-conditioned DiT (see `DiTConfig.context_dim`).
        micro (B, micro_conditions): SDXL's micro-conditions (`DiTConfig.micro_conditions`).
        words (B, W) int64, words_mask (B, W) bool: the second encoder's (`DiTConfig.word_vocab`)."""
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"this DiT was built for {size} x {size} images, got {tuple(x.shape[-2:])}")
        check_context(self.context is not None, context, "DiT")
        pooled = None
        if self.context is not None:
            context, context_mask, pooled = self.context(context, context_mask, words, words_mask)
        elif words is not None:
            raise ValueError("words given to a DiT without text conditioning (context_dim=None)")
        pooled = add_micro(self.micro_embed, micro, pooled, len(t), "DiT")
        c = self.embed(t, y, pooled)
        h = self.patch_embed(x) + self.pos_embed                               # (B, N, D)
        for block in self.blocks:
            h = block(h, c, context, context_mask)
        return unpatchify(self.final_layer(h, c), self.config.patch_size, size, size)
