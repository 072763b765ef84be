"""unCLIP's diffusion prior (Ramesh et al. 2022, sec. 2.1): a decoder-only causal
transformer that denoises a CLIP image embedding given the caption.

    model = build_model("prior", dim=64, text_width=128, context_len=32)
    out = model(x, t, text_tokens, text_mask, text_emb)            (B, dim)

The sequence, in order (the paper's "encoded text, the CLIP text embedding, an embedding
for the diffusion timestep, the noised CLIP image embedding, and a final embedding whose
output from the Transformer is used to predict the unnoised CLIP image embedding"):

    [ M projected text tokens | text embedding | time embedding | noisy image embedding | query ]
      (B, M, text_width)        (B, dim)         (B,) -> sinusoid    (B, dim)               learned

each projected to the transformer's `width`, plus a learned position per slot.  The
blocks are pre-LN (x + attn(LN x), x + mlp(LN x)) with a causal mask, so token i attends
to tokens j <= i, and the text padding masked as keys (every token still sees itself,
so no row of the softmax is empty).  The output is the last (query) token through a final
LayerNorm and a Linear to `dim`: the network's prediction (x0 in the paper; eps or v as
the family's `prediction` says).  The time embedding is the UNet's: sinusoid of t *
time_scale, then Linear-SiLU-Linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import Attention, merge_heads
from ..nn.embeddings import timestep_embedding
from .config import check_fields


@dataclass(frozen=True)
class PriorConfig:
    dim: int = 64                      # the CLIP embedding's width (the data)
    text_width: int = 128              # the width of CLIP's per-token text encodings
    context_len: int = 32              # M text tokens
    width: int = 128                   # the transformer's width
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    time_scale: float = 1.0            # t * time_scale before the sinusoid (the family sets it)

    def __post_init__(self):
        check_fields(self)
        for name in ("dim", "text_width", "context_len", "width", "depth", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"PriorConfig.{name}={getattr(self, name)} is not valid; valid: an integer >= 1")
        if self.width % self.heads:
            raise ValueError(f"PriorConfig width={self.width}, heads={self.heads} are not valid; valid: width a "
                             "multiple of heads")
        if not self.time_scale > 0:
            raise ValueError(f"PriorConfig.time_scale={self.time_scale} is not valid; valid: a number > 0")


def causal_padding_mask(text_mask: Tensor, extra: int) -> Tensor:
    """(B, M) bool text mask -> (B, 1, L, L) bool attention mask, L = M + extra: query i
    may attend to key j when j <= i and key j is not padding; j = i always (a row is
    never empty)."""
    B, M = text_mask.shape
    L = M + extra
    keys = torch.cat([text_mask, text_mask.new_ones(B, extra)], dim=1)            # (B, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=text_mask.device).tril()    # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=text_mask.device)
    return ((causal[None] & keys[:, None, :]) | eye[None])[:, None]


class Block(nn.Module):
    """Pre-LN transformer block: h + attn(LN h, mask), h + mlp(LN h)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(*self.attn.heads(self.norm1(h)), attn_mask=mask)
        h = h + self.attn.proj(merge_heads(out))
        return h + self.mlp(self.norm2(h))


class PriorTransformer(nn.Module):
    """model(x (B, dim), t (B,), text_tokens (B, M, text_width), text_mask (B, M) bool,
    text_emb (B, dim)) -> (B, dim)."""

    EXTRA = 4  # text embedding, time, noisy embedding, query

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.text_proj = nn.Linear(config.text_width, w)
        self.text_emb_proj = nn.Linear(config.dim, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.x_proj = nn.Linear(config.dim, w)
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        self.positions = nn.Parameter(torch.randn(config.context_len + self.EXTRA, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, config.dim)

    def tokens(self, x: Tensor, t: Tensor, text_tokens: Tensor, text_emb: Tensor) -> Tensor:
        """The input sequence (B, M + 4, width), positions added."""
        B, M = text_tokens.shape[:2]
        if M != self.config.context_len or x.shape != (B, self.config.dim) or text_emb.shape != x.shape:
            raise ValueError(f"prior inputs: x and text_emb (B, {self.config.dim}), text_tokens (B, "
                             f"{self.config.context_len}, {self.config.text_width}); got x {tuple(x.shape)}, "
                             f"text_emb {tuple(text_emb.shape)}, text_tokens {tuple(text_tokens.shape)}")
        t = t.expand(B) if t.dim() == 0 or len(t) == 1 else t
        freqs = timestep_embedding(t * self.config.time_scale, self.config.width)
        h = torch.cat([self.text_proj(text_tokens),
                       self.text_emb_proj(text_emb)[:, None],
                       self.time_embed(freqs.to(x.dtype))[:, None],
                       self.x_proj(x)[:, None],
                       self.query.to(x.dtype).expand(B, 1, -1)], dim=1)
        return h + self.positions.to(h.dtype)

    def forward(self, x: Tensor, t: Tensor, text_tokens: Tensor, text_mask: Tensor, text_emb: Tensor) -> Tensor:
        h = self.hidden(x, t, text_tokens, text_mask, text_emb)
        return self.out(self.norm(h[:, -1]))                              # the query token

    def hidden(self, x: Tensor, t: Tensor, text_tokens: Tensor, text_mask: Tensor, text_emb: Tensor) -> Tensor:
        """Every token's output (B, M + 4, width) after the blocks."""
        h = self.tokens(x, t, text_tokens, text_emb)
        mask = causal_padding_mask(text_mask.bool(), self.EXTRA)
        for block in self.blocks:
            h = block(h, mask)
        return h
