"""hirune.nn.attention: token attention (self and cross, with qkv bias or not, qk-norm, key
padding masks) against a naive softmax computed head by head from the module's weights, and
qk-norm's per-head normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hirune.nn import Attention, CrossAttention


# ---------------------------------------------------------------- attention

def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (N, d) q and (M, d) k, v; mask (M,) True = keep."""
    logits = q @ k.T / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask[None], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def linear(layer: torch.nn.Linear, x: torch.Tensor, rows: slice) -> torch.Tensor:
    bias = layer.bias[rows] if layer.bias is not None else 0.0
    return x @ layer.weight[rows].T + bias


def reference(attn, x, context=None, mask=None) -> torch.Tensor:
    """The module's output computed head by head and sample by sample from its weights."""
    H, D = attn.num_heads, x.shape[-1]
    d = D // H
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        heads = []
        for h in range(H):
            rows = [slice(s * D + h * d, s * D + (h + 1) * d) for s in range(3)]
            if context is None:
                q, k, v = (linear(attn.qkv, x[b], r) for r in rows)
            else:
                q = linear(attn.q, x[b], rows[0])
                k, v = linear(attn.kv, context[b], rows[0]), linear(attn.kv, context[b], rows[1])
            if isinstance(attn.q_norm, torch.nn.LayerNorm):  # qk-norm: LayerNorm over the head's d
                q = F.layer_norm(q, (d,), attn.q_norm.weight, attn.q_norm.bias, attn.q_norm.eps)
                k = F.layer_norm(k, (d,), attn.k_norm.weight, attn.k_norm.bias, attn.k_norm.eps)
            heads.append(naive_attention(q, k, v, None if mask is None else mask[b]))
        out[b] = linear(attn.proj, torch.cat(heads, dim=-1), slice(None))
    return out


def randomize_norms(attn: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in (attn.q_norm, attn.k_norm):
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_self_attention_equals_the_naive_softmax(qk_norm, qkv_bias):
    attn = Attention(24, num_heads=3, qk_norm=qk_norm, qkv_bias=qkv_bias).double()
    randomize_norms(attn)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(attn(x), reference(attn, x), atol=1e-12, rtol=0)


def test_self_attention_with_a_key_padding_mask_equals_the_naive_softmax():
    """U-ViT's text tokens: padded tokens are no key for any query (their own rows are kept)."""
    attn = Attention(24, num_heads=3).double()
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False, True], [True, True, True, True, True, True]])
    out = attn(x, mask)
    torch.testing.assert_close(out, reference(attn, x, mask=mask), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[1], attn(x)[1], atol=1e-12, rtol=0)
    assert not torch.allclose(out[0], attn(x)[0])
    with pytest.raises(ValueError, match=r"mask must be bool of shape \(2, 6\)"):
        attn(x, mask[:, :4])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_cross_attention_equals_the_naive_softmax_with_a_key_padding_mask(qk_norm):
    attn = CrossAttention(24, context_dim=10, num_heads=3, qk_norm=qk_norm).double()
    randomize_norms(attn)
    x, context = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 6, 10, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False, False], [False, True, True, True, True, True]])
    out = attn(x, context, mask)
    torch.testing.assert_close(out, reference(attn, x, context, mask), atol=1e-12, rtol=0)
    # padded tokens are invisible: changing them changes nothing; no mask = all kept
    torch.testing.assert_close(attn(x, context + 5.0 * ~mask[..., None], mask), out, atol=1e-12, rtol=0)
    torch.testing.assert_close(attn(x, context), reference(attn, x, context), atol=1e-12, rtol=0)
    assert not torch.allclose(attn(x, context), out)
    with pytest.raises(ValueError, match="mask must be bool"):
        attn(x, context, mask.float())


def test_qk_norm_normalises_each_head_and_changes_the_result():
    plain, normed = Attention(24, 3).double(), Attention(24, 3, qk_norm=True).double()
    normed.load_state_dict(plain.state_dict(), strict=False)  # the same linears, plus the norms
    assert {n for n, _ in normed.named_parameters()} - {n for n, _ in plain.named_parameters()} == {
        "q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"}
    x = 3.0 * torch.randn(2, 7, 24, dtype=torch.float64)
    q, k, v = normed.heads(x)
    for t in (q, k):  # (B, heads, N, d): zero mean, unit variance over each head's d channels
        torch.testing.assert_close(t.mean(-1), torch.zeros_like(t[..., 0]), atol=1e-12, rtol=0)
        torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones_like(t[..., 0]), atol=1e-4, rtol=0)
    assert torch.equal(v, plain.heads(x)[2])
    assert (normed(x) - plain(x)).abs().max() > 1e-3
    cross = CrossAttention(24, 10, 3, qk_norm=True).double()
    q, k, _ = cross.heads(x, torch.randn(2, 4, 10, dtype=torch.float64))
    torch.testing.assert_close(k.var(-1, unbiased=False), torch.ones_like(k[..., 0]), atol=1e-4, rtol=0)
