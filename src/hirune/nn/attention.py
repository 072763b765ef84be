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

q, k and v are separate `nn.Linear` modules named `q`, `k`, `v` (diffusers' to_q, to_k,
to_v), so that adapters (LoRA) and tensor parallelism can address each one.  They were
once fused (`qkv`: one Linear with output rows (q | k | v); cross-attention's `kv`: (k | v));
the weights are still drawn as that one fused Linear and cut into row blocks
(`split_linear`), so the global RNG is consumed as before and every initialisation is
bitwise what it was; `init_fused_` does the same for a model's own re-initialisation (DiT,
U-ViT).  `split_fused_projections` turns the name-keyed tensors of a checkpoint written
before (model, EMA, optimizer moments, shards) into today's names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import group_norm, zero_

# the fused projections of old checkpoints and the modules they became, in row order
FUSED_PROJECTIONS: dict[str, tuple[str, ...]] = {"qkv": ("q", "k", "v"), "kv": ("k", "v")}
_FUSED_KEY = re.compile(r"^(?P<module>(?:.+\.)?)(?P<fused>qkv|kv)\.(?P<param>weight|bias)(?P<rest>\..+)?$")


def split_linear(fused: nn.Linear, parts: int) -> tuple[nn.Linear, ...]:
    """`parts` Linear modules holding the consecutive row blocks of `fused`'s weight (and
    bias): fused(x) == cat([part(x) for part in parts], -1).  They are built without
    drawing from any RNG (`skip_init`), so building `fused` and splitting it consumes the
    global RNG exactly as `fused` alone did."""
    if fused.out_features % parts:
        raise ValueError(f"{fused.out_features} output features do not split into {parts} parts")
    out = fused.out_features // parts
    bias = fused.bias is not None
    weights = fused.weight.detach().chunk(parts)
    biases = fused.bias.detach().chunk(parts) if bias else (None,) * parts
    modules = []
    for w, b in zip(weights, biases):
        part = nn.utils.skip_init(nn.Linear, fused.in_features, out, bias=bias, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            part.weight.copy_(w)
            if b is not None:
                part.bias.copy_(b)
        part.weight.requires_grad_(fused.weight.requires_grad)
        if b is not None:
            part.bias.requires_grad_(fused.bias.requires_grad)
        modules.append(part)
    return tuple(modules)


@torch.no_grad()
def init_fused_(linears: Sequence[nn.Linear], init_: Callable[[Tensor], object]) -> None:
    """Apply the in-place initialiser `init_` (e.g. nn.init.xavier_uniform_) to the weights of
    `linears` as one matrix, their rows stacked (the fused Linear they once were), and copy
    the row blocks back: the same fan-in / fan-out and the same draws as before the split."""
    weights = [m.weight for m in linears]
    fused = torch.empty(sum(w.shape[0] for w in weights), *weights[0].shape[1:], dtype=weights[0].dtype,
                        device=weights[0].device)
    init_(fused)
    for w, block in zip(weights, fused.split([w.shape[0] for w in weights])):
        w.copy_(block)


def fused_groups(module: nn.Module) -> list[tuple[nn.Linear, ...]]:
    """The groups of Linear modules in `module` (itself included) that were one fused Linear
    (an attention's q, k, v; a cross-attention's k, v), in `module.modules()` order: what
    each module with a `fused_linears()` method names."""
    return [group for m in module.modules() if hasattr(m, "fused_linears") for group in m.fused_linears()]


@torch.no_grad()
def init_linears_(module: nn.Module, init_: Callable[[Tensor], object]) -> None:
    """`init_` on the weight of every nn.Linear in `module.modules()` order and zero biases,
    with each fused group (`fused_groups`) initialised as the one matrix it was, at the
    place of its first member: the draws, in order and in value, of the fused layout."""
    first = {id(group[0]): group for group in fused_groups(module)}
    rest = {id(m) for group in first.values() for m in group[1:]}
    for m in module.modules():
        if not isinstance(m, nn.Linear):
            continue
        if id(m) in first:
            init_fused_(first[id(m)], init_)
        elif id(m) not in rest:
            init_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _split_key(key: str) -> list[str] | None:
    """The keys that the checkpoint key `key` of a fused projection became, or None."""
    m = _FUSED_KEY.match(key)
    if m is None:
        return None
    return [f"{m['module']}{part}.{m['param']}{m['rest'] or ''}" for part in FUSED_PROJECTIONS[m["fused"]]]


def split_fused_names(names: Sequence[str]) -> list[str]:
    """Parameter names (or any checkpoint keys) with each fused projection's name replaced
    by its parts' names, in place: `a.qkv.weight` -> `a.q.weight, a.k.weight, a.v.weight`."""
    return [new for name in names for new in (_split_key(name) or [name])]


def split_fused_projections(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's name-keyed tensors written before q, k, v were separate modules, in
    today's names.  Every key `<module>.qkv.<weight|bias>[.<rest>]` becomes the three keys
    `<module>.q...`, `<module>.k...`, `<module>.v...`, and `<module>.kv...` (cross-attention's
    keys and values) the two `<module>.k...`, `<module>.v...`; <module> may carry any prefix
    (`model.`, `ema.`, `optimizer.`) and <rest> any suffix (an optimizer's `.exp_avg`).
    A tensor is cut into equal row blocks along dim 0 (weights, biases, EMA shadows, AdamW
    moments are all shaped like the fused parameter); a 0-dim tensor (AdamW's `step`) and a
    plain number are copied to every part.  Every other key is left alone, so a state that
    is already split comes back unchanged (the same tensors).  The order of the keys is kept,
    parts in place of their fused key.  The pieces are new tensors (no storage shared with
    the input or with each other).

    ValueError for a fused tensor whose rows do not split evenly, or a key present both fused
    and split."""
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        new_keys = _split_key(key)
        if new_keys is None:
            if key in out:
                raise ValueError(f"checkpoint key {key!r} is there both fused and split")
            out[key] = value
            continue
        n = len(new_keys)
        if not torch.is_tensor(value) or value.dim() == 0:
            pieces = [value.clone() if torch.is_tensor(value) else value for _ in range(n)]
        elif value.shape[0] % n:
            raise ValueError(f"checkpoint tensor {key!r} of shape {tuple(value.shape)} does not split into {n} "
                             "equal row blocks")
        else:
            pieces = [p.clone() for p in value.chunk(n)]
        for new, piece in zip(new_keys, pieces):
            if new in tensors or new in out:
                raise ValueError(f"checkpoint key {key!r} is there both fused and split (as {new!r})")
            out[new] = piece
    return out


class SelfAttention2d(nn.Module):
    """x + proj(attention(q, k, v of GroupNorm(x))) over the H*W positions of x: (B, C, H, W).

    The output projection starts at zero, so the block starts as the identity (ADM).
    In channels_last memory the (B, H*W, C) token view is free.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.q, self.k, self.v = split_linear(nn.Linear(channels, 3 * channels), 3)  # drawn as one (see above)
        self.proj = zero_(nn.Linear(channels, channels))

    def fused_linears(self) -> list[tuple[nn.Linear, ...]]:
        return [(self.q, self.k, self.v)]

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # (B, HW, C)
        q, k, v = (split_heads(proj(tokens), self.num_heads) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)                     # (B, heads, HW, d)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))         # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    B, N, D = x.shape
    return x.view(B, N, num_heads, D // num_heads).transpose(1, 2)


def to_heads(x: Tensor, head_dim: int) -> Tensor:
    """(B, N, h * head_dim) -> (B, h, N, head_dim), h read from the width: under tensor
    parallelism a rank's q, k, v hold only its heads (num_heads / tp of them)."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    B, heads, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, heads * d)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, recompute: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d) [masked]) v per head, (B, heads, N, d), by SDPA.

    recompute=True (selective recomputation, Korthikanti et al. 2022, sec. 5): the backward
    pass recomputes this core from q, k and v instead of keeping what it saves (the scores and
    softmax where SDPA materialises them, the output and its log-sum-exp where it does not);
    the projections' activations are kept; exactly the plain run's gradients."""
    def core(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if recompute and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(core, q, k, v, mask, use_reentrant=False)
    return core(q, k, v, mask)


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

    Three linears `q`, `k`, `v` (each dim -> heads x d; `qkv_bias`: with biases), drawn as
    one fused Linear(dim, 3 dim) (see the module docstring); then qk-norm if asked, scaled
    dot-product attention per head, and the output projection `proj`.  No residual: the
    transformer block adds it.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, qkv_bias: bool = True):
        super().__init__()
        head_dim = _head_dim(dim, num_heads)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.recompute_scores = False  # selective recomputation (`attend`; models.recompute_attention)
        self.q, self.k, self.v = split_linear(nn.Linear(dim, 3 * dim, bias=qkv_bias), 3)
        self.q_norm, self.k_norm = _qk_norm(head_dim, qk_norm), _qk_norm(head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def fused_linears(self) -> list[tuple[nn.Linear, ...]]:
        return [(self.q, self.k, self.v)]

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v: each (B, heads, N, d); q and k normalised when qk_norm is on."""
        q, k, v = (to_heads(proj(x), self.head_dim) for proj in (self.q, self.k, self.v))
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: optional (B, N) bool key padding mask, True = a token others may attend to
        (U-ViT's padded caption tokens); as in `CrossAttention`."""
        out = attend(*self.heads(x), key_padding(mask, x), self.recompute_scores)
        return self.proj(merge_heads(out))                                # (B, N, dim)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens x (B, N, dim) to a context (B, M, context_dim):
    queries from x (`q`), keys and values from the context (`k`, `v`, drawn as one fused
    Linear(context_dim, 2 dim)) -> (B, N, dim).

    mask: optional (B, M) bool, True = this context token may be attended to (a key
    padding mask).  Every row needs at least one True: a query with no key to attend to
    has no defined output (the softmax of an empty set).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        head_dim = _head_dim(dim, num_heads)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.recompute_scores = False  # selective recomputation (`attend`)
        self.q = nn.Linear(dim, dim)
        self.k, self.v = split_linear(nn.Linear(context_dim, 2 * dim), 2)  # drawn as one (k | v)
        self.q_norm, self.k_norm = _qk_norm(head_dim, qk_norm), _qk_norm(head_dim, qk_norm)
        self.proj = nn.Linear(dim, dim)

    def fused_linears(self) -> list[tuple[nn.Linear, ...]]:
        return [(self.k, self.v)]

    def heads(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q: (B, heads, N, d); k, v: (B, heads, M, d); q and k normalised when qk_norm is on."""
        q = to_heads(self.q(x), self.head_dim)
        k, v = to_heads(self.k(context), self.head_dim), to_heads(self.v(context), self.head_dim)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        out = attend(*self.heads(x, context), key_padding(mask, context), self.recompute_scores)
        return self.proj(merge_heads(out))
