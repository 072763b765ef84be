"""hirune.nn.attention: token attention (self and cross, with qkv bias or not, qk-norm, key
padding masks) against a naive softmax computed head by head from the module's weights, and
qk-norm's per-head normalisation; the separate q, k, v against the fused projection they
were (its formula, its initialisation), and `split_fused_projections` on old checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hirune.nn import Attention, CrossAttention, SelfAttention2d
from hirune.nn.attention import merge_heads, split_heads


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
            rows = slice(h * d, (h + 1) * d)  # head h's rows of each of q, k, v
            source = x[b] if context is None else context[b]
            q, k, v = linear(attn.q, x[b], rows), linear(attn.k, source, rows), linear(attn.v, source, rows)
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


# ---------------------------------------------------------------- separate q, k, v: the fused projection they were

def fused(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one projection that `linears` were: their weights (and biases) stacked by rows."""
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return torch.cat([m.weight for m in linears]), bias


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_self_attention_equals_the_fused_formula(qk_norm, qkv_bias):
    """attn(x) == the fused code it replaced, run on torch.cat of q, k, v's weights: one
    linear to (q | k | v), chunked in three, split into heads, SDPA, proj."""
    attn = Attention(24, num_heads=3, qk_norm=qk_norm, qkv_bias=qkv_bias).double()
    randomize_norms(attn)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    qkv = F.linear(x, *fused(attn.q, attn.k, attn.v))
    q, k, v = (split_heads(part, 3) for part in qkv.chunk(3, dim=-1))
    expected = attn.proj(merge_heads(F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)))
    torch.testing.assert_close(attn(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_cross_attention_equals_the_fused_formula(qk_norm):
    """q from x; k, v from one fused linear over the context, (k | v) chunked in two."""
    attn = CrossAttention(24, context_dim=10, num_heads=3, qk_norm=qk_norm).double()
    randomize_norms(attn)
    x, context = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 6, 10, dtype=torch.float64)
    q = split_heads(F.linear(x, attn.q.weight, attn.q.bias), 3)
    k, v = (split_heads(part, 3) for part in F.linear(context, *fused(attn.k, attn.v)).chunk(2, dim=-1))
    expected = attn.proj(merge_heads(F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)))
    torch.testing.assert_close(attn(x, context), expected, atol=1e-12, rtol=0)


def test_pixel_self_attention_equals_the_fused_formula():
    """SelfAttention2d: the old code, (B, HW, 3, heads, d) permuted, on the fused weights."""
    attn = SelfAttention2d(16, num_heads=2).double()
    with torch.no_grad():
        attn.proj.weight.normal_()  # zero-initialised: make the whole path count
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    B, C, H, W = x.shape
    tokens = attn.norm(x).flatten(2).transpose(1, 2)
    qkv = F.linear(tokens, *fused(attn.q, attn.k, attn.v)).view(B, H * W, 3, 2, C // 2)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    out = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C))
    torch.testing.assert_close(attn(x), x + out.transpose(1, 2).reshape(B, C, H, W), atol=1e-12, rtol=0)


def test_dalle_attention_equals_the_fused_formula():
    from hirune.models.dalle import CausalSelfAttention

    attn = CausalSelfAttention(16, heads=4, dropout=0.0).double().eval()
    h = torch.randn(2, 5, 16, dtype=torch.float64)
    q, k, v = F.linear(h, *fused(attn.q, attn.k, attn.v)).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril())
    torch.testing.assert_close(attn(h, None, 0), attn.out(y.transpose(1, 2).reshape(2, 5, 16)), atol=1e-12, rtol=0)


def _draws(build):
    """(the module, the next 4 numbers of the global RNG) after building it from seed 0."""
    torch.manual_seed(0)
    module = build()
    return module, torch.rand(4)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_projections_are_drawn_as_the_one_fused_linear(qkv_bias):
    """The initial q | k | v (and k | v) are bitwise the fused Linear's, and building the
    module consumes the global RNG as the fused layout did (every later init unchanged)."""
    from torch import nn

    from hirune.models.dalle import CausalSelfAttention

    def old_attention():
        return nn.Linear(24, 72, bias=qkv_bias), nn.Linear(24, 24)

    def old_cross():
        return nn.Linear(24, 24), nn.Linear(10, 48), nn.Linear(24, 24)

    def old_pixels():
        return nn.Linear(16, 48), nn.Linear(16, 16)

    cases = [(lambda: Attention(24, 3, qk_norm=True, qkv_bias=qkv_bias), old_attention,
              lambda a: [(fused(a.q, a.k, a.v), 0), ((a.proj.weight, a.proj.bias), 1)]),
             (lambda: CrossAttention(24, 10, 3), old_cross,
              lambda a: [((a.q.weight, a.q.bias), 0), (fused(a.k, a.v), 1), ((a.proj.weight, a.proj.bias), 2)]),
             (lambda: SelfAttention2d(16, 2), old_pixels, lambda a: [(fused(a.q, a.k, a.v), 0)]),
             (lambda: CausalSelfAttention(24, 3, 0.0), lambda: (nn.Linear(24, 72), nn.Linear(24, 24)),
              lambda a: [(fused(a.q, a.k, a.v), 0), ((a.out.weight, a.out.bias), 1)])]
    for new, old, pairs in cases:
        (module, after), (reference, after_ref) = _draws(new), _draws(old)
        assert torch.equal(after, after_ref)
        for (weight, bias), i in pairs(module):
            assert torch.equal(weight, reference[i].weight)
            assert (bias is None) == (reference[i].bias is None)
            assert bias is None or torch.equal(bias, reference[i].bias)


def test_split_linear_copies_rows_and_draws_nothing():
    from torch import nn

    from hirune.nn.attention import split_linear

    whole = nn.Linear(5, 6)
    state = torch.get_rng_state()
    q, k = split_linear(whole, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.cat([q.weight, k.weight]), whole.weight) and torch.equal(torch.cat([q.bias, k.bias]),
                                                                                       whole.bias)
    assert q.weight.data_ptr() != whole.weight.data_ptr() and isinstance(q.weight, nn.Parameter)
    with pytest.raises(ValueError, match="do not split into 4"):
        split_linear(whole, 4)


def test_init_linears_draws_each_fused_group_as_one_matrix():
    """init_linears_ (DiT's, U-ViT's re-initialisation): xavier_uniform_ on q, k, v as the one
    (3D, D) matrix, i.e. the bound of fan_out 3D, the same numbers as on the fused Linear."""
    from torch import nn

    from hirune.nn.attention import init_linears_

    block = nn.Sequential(nn.Linear(4, 8), Attention(8, 2), CrossAttention(8, 6, 2))
    torch.manual_seed(1)
    init_linears_(block, nn.init.xavier_uniform_)
    torch.manual_seed(1)
    first = nn.init.xavier_uniform_(torch.empty(8, 4))
    qkv = nn.init.xavier_uniform_(torch.empty(24, 8))
    proj, cross_q = nn.init.xavier_uniform_(torch.empty(8, 8)), nn.init.xavier_uniform_(torch.empty(8, 8))
    kv = nn.init.xavier_uniform_(torch.empty(16, 6))
    cross_proj = nn.init.xavier_uniform_(torch.empty(8, 8))
    attn, cross = block[1], block[2]
    assert torch.equal(block[0].weight, first) and torch.equal(fused(attn.q, attn.k, attn.v)[0], qkv)
    assert torch.equal(attn.proj.weight, proj) and torch.equal(cross.q.weight, cross_q)
    assert torch.equal(fused(cross.k, cross.v)[0], kv) and torch.equal(cross.proj.weight, cross_proj)
    assert all(not m.bias.any() for m in block.modules() if isinstance(m, nn.Linear))


# ---------------------------------------------------------------- old checkpoints: split_fused_projections

def test_split_fused_projections_on_a_hand_made_state():
    from hirune.nn.attention import split_fused_projections

    rows = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    step = torch.tensor(7.0)
    old = {
        "blocks.0.attn.qkv.weight": rows,                                   # a model weight (q | k | v)
        "blocks.0.attn.qkv.bias": torch.arange(6.0),                        # its bias
        "ema.middle.1.qkv.weight": rows + 100,                              # an EMA shadow, prefixed
        "optimizer.blocks.0.attn.qkv.weight.exp_avg": rows + 200,           # AdamW moments
        "optimizer.blocks.0.attn.qkv.weight.exp_avg_sq": rows + 300,
        "optimizer.blocks.0.attn.qkv.weight.step": step,                    # a scalar: copied
        "down.1.cross.kv.weight": torch.arange(4 * 3.0).view(4, 3),         # cross-attention (k | v)
        "down.1.cross.kv.bias": torch.arange(4.0),
        "down.1.cross.q.weight": torch.ones(2, 2),                          # already its own module
        # "qkv" / "kv" elsewhere in a key: left alone
        "blocks.0.attn.qkv_norm.weight": torch.ones(3), "blocks.qkv.0.weight": torch.ones(3),
        "to_qkv.weight": torch.ones(3), "mlp.kv.scale": torch.ones(3), "attn.qkv": torch.ones(3),
        "kv_cache.weight": torch.ones(3),
    }
    new = split_fused_projections(old)
    for part, block in zip("qkv", rows.chunk(3)):
        assert torch.equal(new[f"blocks.0.attn.{part}.weight"], block)
        assert torch.equal(new[f"ema.middle.1.{part}.weight"], block + 100)
        assert torch.equal(new[f"optimizer.blocks.0.attn.{part}.weight.exp_avg"], block + 200)
        assert torch.equal(new[f"optimizer.blocks.0.attn.{part}.weight.exp_avg_sq"], block + 300)
        copied = new[f"optimizer.blocks.0.attn.{part}.weight.step"]
        assert copied.shape == () and torch.equal(copied, step) and copied is not step
    assert [new[f"blocks.0.attn.{p}.bias"].tolist() for p in "qkv"] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(new["down.1.cross.k.weight"], old["down.1.cross.kv.weight"][:2])
    assert torch.equal(new["down.1.cross.v.weight"], old["down.1.cross.kv.weight"][2:])
    assert new["down.1.cross.k.bias"].tolist() == [0, 1] and new["down.1.cross.v.bias"].tolist() == [2, 3]
    untouched = ["down.1.cross.q.weight", "blocks.0.attn.qkv_norm.weight", "blocks.qkv.0.weight", "to_qkv.weight",
                 "mlp.kv.scale", "attn.qkv", "kv_cache.weight"]
    assert all(new[k] is old[k] for k in untouched)
    assert not any(k.endswith((".qkv.weight", ".qkv.bias", ".kv.weight", ".kv.bias")) or ".qkv.weight." in k
                   for k in new)
    assert len(new) == len(old) + 2 * 6 + 1 * 2  # six fused qkv keys -> 3 each, two kv keys -> 2 each
    # the order: parts in place of their fused key
    assert list(new)[:6] == [f"blocks.0.attn.{p}.{w}" for w in ("weight", "bias") for p in "qkv"]
    # the pieces own their memory: a resumed optimizer's in-place steps touch one part only
    new["optimizer.blocks.0.attn.q.weight.step"] += 1
    new["blocks.0.attn.q.weight"].zero_()
    assert float(new["optimizer.blocks.0.attn.k.weight.step"]) == 7.0 and rows.sum() > 0
    # already split: unchanged, the same tensors
    again = split_fused_projections(new)
    assert list(again) == list(new) and all(again[k] is new[k] for k in new)


def test_split_fused_projections_refuses_what_it_cannot_split():
    from hirune.nn.attention import split_fused_projections

    with pytest.raises(ValueError, match="does not split into 3 equal row blocks"):
        split_fused_projections({"a.qkv.weight": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="both fused and split"):
        split_fused_projections({"a.qkv.weight": torch.zeros(6, 2), "a.k.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="both fused and split"):
        split_fused_projections({"a.k.weight": torch.zeros(2, 2), "a.kv.weight": torch.zeros(4, 2)})


def test_an_old_state_dict_loads_into_todays_modules():
    """A fused (old-layout) state dict of real modules, split, loads strictly and computes the same."""
    from hirune.nn.attention import split_fused_projections

    torch.manual_seed(0)
    attn, cross = Attention(24, 3), CrossAttention(24, 10, 3)
    old = {"qkv.weight": fused(attn.q, attn.k, attn.v)[0], "qkv.bias": fused(attn.q, attn.k, attn.v)[1],
           "proj.weight": attn.proj.weight, "proj.bias": attn.proj.bias}
    fresh = Attention(24, 3)
    fresh.load_state_dict(split_fused_projections({k: v.detach() for k, v in old.items()}))
    x = torch.randn(2, 5, 24)
    assert torch.equal(fresh(x), attn(x))
    old = {k: v.detach() for k, v in cross.state_dict().items() if k[0] not in "kv"}
    old.update({"kv.weight": fused(cross.k, cross.v)[0].detach(), "kv.bias": fused(cross.k, cross.v)[1].detach()})
    fresh = CrossAttention(24, 10, 3)
    fresh.load_state_dict(split_fused_projections(old))
    context = torch.randn(2, 4, 10)
    assert torch.equal(fresh(x, context), cross(x, context))
