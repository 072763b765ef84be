"""A small GPT-style decoder, the model the memory playbooks measure.

Token embedding + learned position embedding, L pre-LN blocks, a final LayerNorm and an
output head (tied to the token embedding, or its own V x h matrix).  One block is

    x = x + proj(attention(ln1(x)))        causal self-attention, a heads of width d = h / a
    x = x + fc2(gelu(fc1(ln2(x))))         the MLP, 4h wide

with biases on every Linear and LayerNorm.  `attention="math"` writes the core attention out,
softmax(q k^T / sqrt(d) + causal mask) v, so autograd keeps the (b, a, s, s) probabilities for
the backward pass: the s^2 term of the activation formula.  `attention="sdpa"` calls
F.scaled_dot_product_attention (on the CPU its flash kernel, which keeps q, k, v, the output
and one log-sum-exp per row: no s^2 term).

Recomputation (Korthikanti et al. 2022, "Reducing activation recomputation in large
transformer models"): `selective=True` wraps only the core attention (q k^T, softmax, x v) in
torch.utils.checkpoint, so its s^2 tensors are rebuilt in the backward pass; `full=True`
wraps every block, so only each block's input stays.  Non-reentrant checkpointing replays the
random state, so dropout draws the same masks and the gradients are exactly the plain ones.

This model is a teaching object of the playbooks; hirune's trainers build their networks in
`hirune.models`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

ATTENTION = ("math", "sdpa")


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 128        # V
    seq_len: int = 64       # s, the longest sequence (the learned position table's rows)
    layers: int = 2         # L
    hidden: int = 64        # h
    heads: int = 4          # a
    tied: bool = True       # the head reuses the token embedding (no V x h matrix of its own)
    attention: str = "math"
    selective: bool = False  # recompute the core attention in the backward pass
    full: bool = False       # recompute each whole block in the backward pass
    dropout: float = 0.0     # on the attention probabilities and after each residual branch

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r} is not valid; valid: {', '.join(ATTENTION)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")


def recompute(fn, *args):
    """fn(*args) with its saved tensors dropped after the forward pass and rebuilt by running fn
    again in the backward pass; the random state is replayed, so dropout draws the same masks."""
    return checkpoint(fn, *args, use_reentrant=False)


class CoreAttention(nn.Module):
    """softmax(q k^T / sqrt(d), causal) v for q, k, v: (b, a, s, d) -> (b, a, s, d)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.math = config.attention == "math"
        self.dropout = config.dropout
        # True above the diagonal (the future a query must not see); a buffer, not an activation:
        # masked_fill keeps a view of it, which does not grow with the batch
        self.register_buffer("future", torch.ones(config.seq_len, config.seq_len, dtype=torch.bool).triu(1),
                             persistent=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        p_drop = self.dropout if self.training else 0.0
        if not self.math:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
        s = q.shape[-2]
        # contiguous copies, so that matmul keeps these three (b s h each) for any batch size
        # (on the permuted views it would copy for b > 1 and keep a view of all of qkv for b = 1)
        q, k, v = (q * (1.0 / math.sqrt(q.shape[-1]))).contiguous(), k.contiguous(), v.contiguous()
        scores = q @ k.transpose(-2, -1)                                            # (b, a, s, s)
        probs = scores.masked_fill(self.future[:s, :s], float("-inf")).softmax(-1)
        return F.dropout(probs, p_drop, self.training) @ v


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        h = config.hidden
        self.heads, self.selective, self.dropout = config.heads, config.selective, config.dropout
        self.recompute = recompute
        self.ln1, self.qkv, self.core, self.proj = nn.LayerNorm(h), nn.Linear(h, 3 * h), CoreAttention(config), \
            nn.Linear(h, h)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(h), nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def attention(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (b, a, s, d)
        if self.selective and self.training:
            out = self.recompute(self.core, q, k, v)
        else:
            out = self.core(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, s, h))

    def forward(self, x: Tensor) -> Tensor:
        x = x + F.dropout(self.attention(self.ln1(x)), self.dropout, self.training)
        return x + F.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), self.dropout, self.training)


class GPT(nn.Module):
    """tokens (b, s) int64 -> logits (b, s, V)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.tokens = nn.Embedding(config.vocab, h)
        self.positions = nn.Parameter(torch.randn(config.seq_len, h) * 0.02)   # sliced, not looked up
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(h)
        self.head = None if config.tied else nn.Linear(h, config.vocab, bias=False)
        self.recompute = recompute

    def forward(self, idx: Tensor) -> Tensor:
        s = idx.shape[1]
        if s > self.config.seq_len:
            raise ValueError(f"sequence of {s} tokens, longer than seq_len={self.config.seq_len}")
        x = F.dropout(self.tokens(idx) + self.positions[:s], self.config.dropout, self.training)
        for block in self.blocks:
            x = self.recompute(block, x) if self.config.full and self.training else block(x)
        x = self.ln_f(x)
        return F.linear(x, self.tokens.weight if self.head is None else self.head.weight)

    def checkpointed(self) -> list[nn.Module]:
        """The modules whose forward is recomputed in the backward pass (their inputs are what
        checkpointing keeps of them)."""
        if self.config.full:
            return list(self.blocks)
        if self.config.selective:
            return [b.core for b in self.blocks]
        return []


def loss_fn(model: nn.Module, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy of tokens (b, s + 1): predict tokens[:, 1:] from tokens[:, :-1]."""
    # two copies: the embedding keeps the inputs and the loss the targets, b s ids each, for any b
    # (slices would keep all b (s + 1) ids, shared between the two when b = 1)
    inputs, targets = (t.clone(memory_format=torch.contiguous_format) for t in (tokens[:, :-1], tokens[:, 1:]))
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def random_tokens(config: GPTConfig, batch: int, seq: int | None = None, seed: int = 0) -> Tensor:
    """(batch, seq + 1) random token ids, the same for a given seed on every process."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab, (batch, (seq or config.seq_len) + 1), generator=g)
