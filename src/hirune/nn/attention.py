"""Multi-head attention: over the pixels of a feature map (DDPM, ADM) and over tokens
(transformers: self-attention, and cross-attention to a context such as text tokens).

Every variant runs through `F.scaled_dot_product_attention` (flash / memory-efficient
kernels where available), i.e. softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017,
eq. 1).  Token shapes: x (B, N, D) with D = heads x d; per-head tensors (B, heads, N, d).

qk-norm (Dehghani et al. 2023, "Scaling Vision Transformers to 22B Parameters", sec. 2.1):
a LayerNorm over the d channels of each head applied to q and k before the dot product
(shared by the heads, with its own learned scale and bias), which keeps the attention
logits from growing without bound in large or long-trained models.  ViT-22B normalises
with LayerNorm; SD3 (Esser et al. 2024) uses RMSNorm instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import group_norm, zero_


class SelfAttention2d(nn.Module):
    """x + proj(attention(qkv(GroupNorm(x)))) over the H*W positions of x: (B, C, H, W).

    The output projection starts at zero, so the block starts as the identity (ADM).
    In channels_last memory the (B, H*W, C) token view is free.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # (B, HW, C)
        qkv = self.qkv(tokens).view(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                              # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)                     # (B, heads, HW, d)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))         # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    B, N, D = x.shape
    return x.view(B, N, num_heads, D // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    B, heads, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, heads * d)


def _head_dim(dim: int, num_heads: int) -> int:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"a width of {dim} does not split into {num_heads} heads")
    return dim // num_heads


def _qk_norm(head_dim: int, enabled: bool) -> nn.Module:
    """The per-head LayerNorm of qk-norm (see the module docstring), or the identity."""
    return nn.LayerNorm(head_dim, eps=1e-6) if enabled else nn.Identity()


def key_padding(mask: Tensor | None, keys: Tensor) -> Tensor | None:
    """A (B, M) bool key padding mask for the keys (B, M, D) -> SDPA's (B, 1, 1, M) mask,
    shared by every head and query (None stays None)."""
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.shape != keys.shape[:2]:
        raise ValueError(f"mask must be bool of shape {tuple(keys.shape[:2])} (B, M), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention over tokens: x (B, N, dim) -> (B, N, dim).

    One fused linear gives q, k, v (`qkv`, output features ordered (q | k | v), each
    heads x d); then qk-norm if asked, scaled dot-product attention per head, and the
    output projection `proj`.  No residual: the transformer block adds it.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, qkv_bias: bool = True):
        super().__init__()
        head_dim = _head_dim(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm, self.k_norm = _qk_norm(head_dim, qk_norm), _qk_norm(head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v: each (B, heads, N, d); q and k normalised when qk_norm is on."""
        q, k, v = (split_heads(part, self.num_heads) for part in self.qkv(x).chunk(3, dim=-1))
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: optional (B, N) bool key padding mask, True = a token others may attend to
        (U-ViT's padded caption tokens); as in `CrossAttention`."""
        out = F.scaled_dot_product_attention(*self.heads(x), attn_mask=key_padding(mask, x))
        return self.proj(merge_heads(out))                                # (B, N, dim)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens x (B, N, dim) to a context (B, M, context_dim):
    queries from x, keys and values from the context -> (B, N, dim).

    mask: optional (B, M) bool, True = this context token may be attended to (a key
    padding mask).  Every row needs at least one True: a query with no key to attend to
    has no defined output (the softmax of an empty set).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        head_dim = _head_dim(dim, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)                         # (k | v)
        self.q_norm, self.k_norm = _qk_norm(head_dim, qk_norm), _qk_norm(head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q: (B, heads, N, d); k, v: (B, heads, M, d); q and k normalised when qk_norm is on."""
        q = split_heads(self.q(x), self.num_heads)
        k, v = (split_heads(part, self.num_heads) for part in self.kv(context).chunk(2, dim=-1))
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        out = F.scaled_dot_product_attention(*self.heads(x, context), attn_mask=key_padding(mask, context))
        return self.proj(merge_heads(out))
