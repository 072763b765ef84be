"""DALL-E's transformer (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", sec. 2.2):
a decoder-only causal transformer over one stream of text tokens followed by image tokens.

    sequence  [t_0 t_1 ... t_{L-1} | i_0 i_1 ... i_{N-2}]        L = text_len, N = h w codes
    predicts  [t_1 ... t_{L-1}     | i_0 i_1 ... i_{N-1}]        position p predicts token p + 1

The text is padded (PAD = 0 after its tokens) or cut to `text_len`; the image is the code
grid of an image tokenizer read row by row.  Text and image tokens have their own
embedding tables and their own learned position tables.  The output head scores the
joint vocabulary, text tokens 0..V_text-1 then image codes V_text..V_text+K-1; the
offset between the two lives in `JointVocabulary` and nowhere else.  A position that
predicts text is scored on the text part only, one that predicts an image code on the
image part only (DALL-E's logit masks).

Incremental decoding: `model(text, image, cache=cache)` computes only the positions after
those the `KVCache` already holds (their keys and values are kept per layer), so a sampler
that passes the growing prefix pays one position per token instead of the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.attention import attend, merge_heads, split_linear, to_heads
from ..nn.parallel import attention_plan, check_split, keep_mask, mlp_plan, no_sequence_parallel


@dataclass(frozen=True)
class JointVocabulary:
    """Text tokens 0..text_vocab-1, then image codes at offset text_vocab (the one place
    where image codes and joint ids are converted)."""

    text_vocab: int
    num_codes: int

    @property
    def offset(self) -> int:
        return self.text_vocab

    @property
    def size(self) -> int:
        return self.text_vocab + self.num_codes

    def image_ids(self, codes: Tensor) -> Tensor:
        """Image codes 0..K-1 -> their ids in the joint vocabulary."""
        return codes + self.offset

    def codes(self, ids: Tensor) -> Tensor:
        """Joint ids of image tokens -> image codes 0..K-1."""
        return ids - self.offset

    def text_logits(self, logits: Tensor) -> Tensor:
        """(..., size) -> the scores of the text tokens (..., text_vocab)."""
        return logits[..., : self.offset]

    def image_logits(self, logits: Tensor) -> Tensor:
        """(..., size) -> the scores of the image codes (..., num_codes), indexed by code."""
        return logits[..., self.offset:]


@dataclass(frozen=True)
class DalleConfig:
    """text_vocab: text tokens (PAD = 0 among them); text_len: L; num_codes: K of the image
    tokenizer; image_len: N = h w codes per image; width, depth, heads of the transformer."""

    text_vocab: int = 64
    text_len: int = 16
    num_codes: int = 256
    image_len: int = 49
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for key in ("text_vocab", "text_len", "num_codes", "image_len", "width", "depth", "heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"DalleConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.width % self.heads:
            raise ValueError(f"DalleConfig.width={self.width} must be divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DalleConfig.dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """The keys and values of the positions computed so far, per layer: (B, heads, T, d)."""

    def __init__(self):
        self.keys: list[Tensor | None] = []
        self.values: list[Tensor | None] = []

    @property
    def length(self) -> int:
        return 0 if not self.keys or self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' k, v (B, heads, m, d) of `layer`; all keys and values so far."""
        while len(self.keys) <= layer:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], 2), torch.cat([self.values[layer], v], 2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Separate `q`, `k`, `v` linears (drawn as the one fused Linear(width, 3 width) they once
    were, before `out`: `nn.attention.split_linear`) and the output projection `out`."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.dropout_heads = None  # (index, parts): the heads a tensor-parallel rank holds (nn.parallel.keep_mask)
        self.recompute_scores = False  # selective recomputation (models.recompute_attention)
        fused, out = nn.Linear(width, 3 * width), nn.Linear(width, width)  # the draws, in their order
        self.q, self.k, self.v = split_linear(fused, 3)  # registered first: the parameter order of qkv, out
        self.out = out

    def fused_linears(self) -> list[tuple[nn.Linear, ...]]:
        return [(self.q, self.k, self.v)]

    def forward(self, h: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        """h (B, m, width): the last m positions, each attending to itself and every earlier
        one (the earlier ones' keys and values from the cache, where given)."""
        B, m, _ = h.shape
        head_dim = self.q.in_features // self.heads
        q, k, v = (to_heads(proj(h), head_dim) for proj in (self.q, self.k, self.v))  # (B, heads [/ tp], m, d)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        T = k.shape[2]  # keys at positions 0..T-1, queries at T-m..T-1
        mask = torch.ones(m, T, dtype=torch.bool, device=h.device).tril(diagonal=T - m)
        if not (self.training and self.dropout):
            return self.out(merge_heads(attend(q, k, v, mask, self.recompute_scores)))
        if self.recompute_scores and torch.is_grad_enabled():  # selective recomputation (the RNG restored)
            from torch.utils.checkpoint import checkpoint

            return self.out(merge_heads(checkpoint(self.dropped, q, k, v, mask, use_reentrant=False)))
        return self.out(merge_heads(self.dropped(q, k, v, mask)))

    def dropped(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(d), masked) v with dropout on the probabilities, the mask drawn for
        every head and cut to the rank's (`nn.parallel.keep_mask`): the same on any layout."""
        probs = torch.softmax((q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf")), -1)
        keep = keep_mask(probs.shape, self.dropout, self.dropout_heads, q.device)
        return (probs * keep / (1 - self.dropout)) @ v


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, h: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        h = h + self.attn(self.norm1(h), cache, layer)
        return h + self.mlp(self.norm2(h))


def build_token_model(model: nn.Module, c: DalleConfig, block) -> None:
    """DALL-E's modules, set on `model` in their order: the joint vocabulary, the text and
    image embeddings, their position tables, `depth` blocks `block(width, heads, dropout)`,
    the final LayerNorm and the head; the tables drawn from normal(0.02).  A model built on
    these names loads a DALL-E state dict (`models.cogvideo`)."""
    model.config = c
    model.vocabulary = JointVocabulary(c.text_vocab, c.num_codes)
    model.text_embedding = nn.Embedding(c.text_vocab, c.width)
    model.image_embedding = nn.Embedding(c.num_codes, c.width)
    model.text_positions = nn.Parameter(torch.zeros(c.text_len, c.width))
    model.image_positions = nn.Parameter(torch.zeros(c.image_len, c.width))
    model.blocks = nn.ModuleList(block(c.width, c.heads, c.dropout) for _ in range(c.depth))
    model.norm, model.head = nn.LayerNorm(c.width), nn.Linear(c.width, model.vocabulary.size)
    for table in (model.text_embedding.weight, model.image_embedding.weight, model.text_positions,
                  model.image_positions):
        nn.init.normal_(table, std=0.02)


class TokenModel(nn.Module):
    """What every transformer over [text | image codes] shares beside `build_token_model`'s
    modules: a fresh key/value cache and the text's and image codes' parts of the joint
    logits (the protocol of `sampling.autoregressive`)."""

    def new_cache(self) -> KVCache:
        return KVCache()

    def image_logits(self, logits: Tensor) -> Tensor:
        return self.vocabulary.image_logits(logits)

    def text_logits(self, logits: Tensor) -> Tensor:
        return self.vocabulary.text_logits(logits)


class DalleTransformer(TokenModel):
    """model(text (B, L), image (B, n) codes, cache=None) -> logits (B, L + n, V_joint) of the
    positions the cache does not hold yet (all of them without a cache).  n <= N - 1 in
    training (the last code is only predicted); sampling passes 0..N-1 codes."""

    def __init__(self, config: DalleConfig):
        super().__init__()
        build_token_model(self, config, Block)

    def check_tokens(self, text: Tensor, image: Tensor) -> None:
        """ValueError for a text id outside 0..text_vocab-1, a code outside 0..K-1, or lengths
        past the tables."""
        c = self.config
        if text.dim() != 2 or text.shape[1] != c.text_len:
            raise ValueError(f"text must be (B, text_len={c.text_len}) token ids, got {tuple(text.shape)}")
        if image.dim() != 2 or image.shape[1] > c.image_len or len(image) != len(text):
            raise ValueError(f"image must be (B={len(text)}, n <= {c.image_len}) codes, got {tuple(image.shape)}")
        for name, ids, size in (("text token", text, c.text_vocab), ("image code", image, c.num_codes)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                raise ValueError(f"{name} {bad} is outside the vocabulary; valid: 0..{size - 1}")

    def embed(self, text: Tensor, image: Tensor) -> Tensor:
        """(B, L + n, width): each part's token embedding plus its own position table."""
        n = image.shape[1]
        h_text = self.text_embedding(text) + self.text_positions
        h_image = self.image_embedding(image) + self.image_positions[:n]
        return torch.cat([h_text, h_image], 1)

    def tensor_parallel_plan(self, tp: int, sp: bool = False) -> list[tuple[str, str]]:
        """Megatron's split of every block (`hirune.nn.parallel`): attention by heads, its dropout
        mask drawn for every head and cut (`head_dropout`), the MLP column then row (its dropout
        acts on the all-reduced output, the same on every rank)."""
        c = self.config
        no_sequence_parallel(sp, "DALL-E", "it samples one token at a time from its cache, and one token cannot "
                                          "be cut over tp ranks")
        check_split(tp, "DALL-E transformer", heads=c.heads, width=c.width, mlp_width=4 * c.width)
        plan = []
        for i in range(c.depth):
            plan += attention_plan(f"blocks.{i}.attn", qk_norm=False, sequence=False, out="out")
            plan += mlp_plan(f"blocks.{i}.mlp", sequence=False) + [(f"blocks.{i}.attn", "head_dropout")]
        return plan

    def forward(self, text: Tensor, image: Tensor, cache: KVCache | None = None) -> Tensor:
        self.check_tokens(text, image)
        start = cache.length if cache is not None else 0
        h = self.embed(text, image)[:, start:]  # only the positions the cache does not hold
        for layer, block in enumerate(self.blocks):
            h = block(h, cache, layer)
        return self.head(self.norm(h))
