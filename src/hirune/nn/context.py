"""Sequence conditions (text) for the networks: a context of M tokens (B, M, D_c) with a
key padding mask (B, M), True = a real token.

Two ways a network reads the context, as in latent diffusion / Stable Diffusion and SDXL:
- cross-attention: image tokens (UNet pixels at the attention levels, DiT patches) attend
  to the context tokens (`CrossAttention2d` here, `CrossAttention` in DiT's blocks);
- as input tokens: U-ViT (Bao et al. 2023, its MS-COCO model) projects the context tokens
  to its width and puts them in its one token sequence beside time and patches, so its
  self-attention is the cross-attention (padding masked out as keys);
- a pooled vector: the masked mean of the context, projected and added to the time
  embedding, so every layer gets the gist of the caption (SDXL adds its pooled text
  embedding the same way).

`ContextEmbedding` is the part every text-conditioned network owns: it takes either float
embeddings from a frozen encoder (`hirune.text.MiniLM`) or token ids, which it embeds
with a small trainable transformer (`TextTransformer`, trained with the network) -- or both
at once, as SDXL reads two text encoders (Podell et al. 2023, sec. 2.1): see `word_vocab`.

Two encoders, one sequence.  SDXL concatenates its two encoders' per-token outputs along
the *features* (768 + 1280 = 2048 per token), which is sound there because both use the
same tokenizer, so token i is the same word in both.  hirune's pair does not share one: the
word tokenizer gives "[BOS] a thick seven" where MiniLM's WordPiece gives "[CLS] a thick
seven [SEP]", and longer captions split words into pieces, so position i holds different
words and a feature concatenation would glue unrelated halves into one key.  Here they are
concatenated along the *sequence*: the word tokens, embedded at their own width, go through
a Linear to the frozen encoder's width and follow its tokens, the masks concatenated, so
every key the cross-attention reads is one real token of one encoder.  The pooled vector is
the frozen encoder's alone, as SDXL's is its bigger encoder's (OpenCLIP bigG's pooled
output): the masked mean of all-MiniLM-L6-v2's tokens is that model's own sentence
embedding (it was trained with mean pooling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossAttention
from .layers import group_norm, zero_
from .parallel import attention_plan, check_split, mlp_plan, prefixed


def masked_mean(context: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real tokens: context (B, M, D), mask (B, M) bool -> (B, D)."""
    w = mask.to(context.dtype)[..., None]
    return (context * w).sum(1) / w.sum(1).clamp_min(1.0)


class TextTransformer(nn.Module):
    """A small trainable text encoder: token and learned position embeddings, `depth`
    pre-LN transformer layers whose attention skips padding, a final LayerNorm.
    tokens (B, M) int64, mask (B, M) bool -> (B, M, dim)."""

    def __init__(self, vocab_size: int, dim: int, depth: int = 2, num_heads: int = 4, max_len: int = 32):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(CrossAttention(dim, dim, num_heads) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                nn.Linear(4 * dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token.weight, std=0.02)

    def tensor_parallel_plan(self, tp: int) -> list[tuple[str, str]]:
        """Each layer split by heads and its MLP column then row (`hirune.nn.parallel`); the
        captions' few tokens stay whole on every rank (no sequence parallelism here)."""
        check_split(tp, "text encoder", num_heads=self.attns[0].num_heads, mlp_width=self.mlps[0][1].out_features)
        plan = []
        for i in range(len(self.attns)):
            plan += attention_plan(f"attns.{i}", qk_norm=False, sequence=False)
            plan += mlp_plan(f"mlps.{i}", first="1", second="3", sequence=False)
        return plan

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        if tokens.shape[1] > self.position.shape[0]:
            raise ValueError(f"{tokens.shape[1]} tokens; this text encoder takes at most {self.position.shape[0]}")
        h = self.token(tokens) + self.position[: tokens.shape[1]]
        for norm, attn, mlp in zip(self.attn_norms, self.attns, self.mlps):
            n = norm(h)
            h = h + attn(n, n, mask)       # self-attention with a key padding mask
            h = h + mlp(h)
        return self.norm(h)


def context_plan(context, tp: int, prefix: str = "context") -> list[tuple[str, str]]:
    """The tensor-parallel plan of a `ContextEmbedding`'s trainable text encoders (none for a
    frozen encoder's features), in the model's paths."""
    if context is None:
        return []
    return [entry for name in ("encoder", "words") if isinstance(getattr(context, name, None), TextTransformer)
            for entry in prefixed(f"{prefix}.{name}", getattr(context, name).tensor_parallel_plan(tp))]


class ContextEmbedding(nn.Module):
    """context -> (tokens for cross-attention (B, M, context_dim), their mask, pooled (B, emb_dim)).

    vocab_size None: `context` is float (B, M, context_dim) from a frozen encoder.
    vocab_size set: `context` is token ids (B, M), embedded by a `TextTransformer`.
    emb_dim None: no pooled vector (U-ViT reads the caption as tokens only); pooled is None.
    word_vocab set (two encoders, the module docstring): `context` is a frozen encoder's
    float tokens and `words` (B, W) token ids of a word tokenizer, embedded by a
    `TextTransformer` of width word_dim and at most word_len tokens (`words`), then by a
    Linear to context_dim (`words_proj`): the tokens are (B, M + W, context_dim), the context's
    first, the mask (B, M + W); pooled reads the context's tokens alone.
    """

    def __init__(self, context_dim: int, emb_dim: int | None, vocab_size: int | None = None, max_len: int = 32,
                 word_vocab: int | None = None, word_dim: int = 128, word_len: int = 16):
        super().__init__()
        self.encoder = TextTransformer(vocab_size, context_dim, max_len=max_len) if vocab_size else None
        self.pooled = nn.Sequential(nn.Linear(context_dim, emb_dim), nn.SiLU(),
                                    nn.Linear(emb_dim, emb_dim)) if emb_dim else None
        if word_vocab and vocab_size:
            raise ValueError("two text encoders read a frozen encoder's float context beside the words: "
                             "vocab_size (token ids as the context) and word_vocab cannot both be set")
        self.words = TextTransformer(word_vocab, word_dim, max_len=word_len) if word_vocab else None
        self.words_proj = nn.Linear(word_dim, context_dim) if word_vocab else None

    def forward(self, context: Tensor, mask: Tensor | None, words: Tensor | None = None,
                words_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(tokens, mask, pooled); the mask is the one given (None stays None) unless words
        are appended."""
        given = mask
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        if self.encoder is not None:
            if context.dtype != torch.long:
                raise TypeError(f"this network embeds its own text: context must be token ids (int64), "
                                f"got {context.dtype}")
            context = self.encoder(context, mask)
        elif not context.is_floating_point():
            raise TypeError("this network reads a frozen encoder's embeddings: context must be float (B, M, D)")
        pooled = None if self.pooled is None else self.pooled(masked_mean(context, mask))
        if (words is not None) != (self.words is not None):
            raise ValueError("words (B, W) token ids go with a network built with word_vocab (two text encoders, "
                             "text_encoder='tiny+minilm'), and such a network needs them "
                             f"(words given: {words is not None}, word_vocab set: {self.words is not None})")
        if words is None:
            return context, given, pooled
        if words.dtype != torch.long:
            raise TypeError(f"words must be token ids (int64), got {words.dtype}")
        if words_mask is None:
            words_mask = torch.ones(words.shape, dtype=torch.bool, device=words.device)
        tokens = self.words_proj(self.words(words, words_mask)).to(context.dtype)
        return torch.cat([context, tokens], 1), torch.cat([mask, words_mask.to(mask.device)], 1), pooled


class CrossAttention2d(nn.Module):
    """x + proj(attention from the pixels of x (B, C, H, W) to the context), after a
    GroupNorm; the output projection starts at zero, so the block starts as the identity
    (the cross-attention of latent diffusion's SpatialTransformer, without its extras)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = CrossAttention(channels, context_dim, num_heads)
        zero_(self.attn.proj)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # (B, HW, C)
        out = self.attn(tokens, context, mask)                             # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


def check_word_fields(config) -> None:
    """A network config's two-encoder fields (word_vocab, word_dim, word_len; see
    `ContextEmbedding`): positive, and word_vocab only beside a frozen encoder's float context
    (context_dim set, context_vocab None)."""
    name = type(config).__name__
    if config.word_vocab is None:
        return
    for field in ("word_vocab", "word_dim", "word_len"):
        if getattr(config, field) < 1:
            raise ValueError(f"{name}.{field}={getattr(config, field)} is not valid; valid: a positive int")
    if not config.context_dim or config.context_vocab:
        raise ValueError(f"{name}.word_vocab={config.word_vocab} is not valid with context_dim={config.context_dim}, "
                         f"context_vocab={config.context_vocab}; valid: word_vocab beside a frozen encoder's float "
                         "context (context_dim set, context_vocab=None), or word_vocab=None")


def check_context(has_context: bool, context: Tensor | None, name: str) -> None:
    if has_context and context is None:
        raise ValueError(f"this {name} is text-conditioned: pass context (the null condition is the "
                         "encoding of the empty caption)")
    if not has_context and context is not None:
        raise ValueError(f"context given to a {name} without text conditioning (context_dim=None)")


__all__ = ["ContextEmbedding", "CrossAttention2d", "TextTransformer", "check_context", "check_word_fields",
           "masked_mean"]
