"""Transformer backbones (DiT, U-ViT) and their pieces: patches and sin-cos positions, token
attention (self, cross, qk-norm) against a naive softmax, shapes, zero init, conditioning,
the papers' parameter counts, diffusers' DiTTransformer2DModel as an oracle, bad input, and
a short training run on the digits with a checkpoint round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from hirune.models import blocks
from hirune.models import DIT_SIZES, UVIT_SIZES, build_model, model_config
from hirune.nn import Attention, CrossAttention, patchify, sincos_position_embedding, unpatchify

# Small enough for milliseconds on a CPU; the named sizes are checked by their counts below.
SMALL = {"dit": dict(size="T/2", depth=2, hidden_size=64, num_heads=4),
         "uvit": dict(size="tiny", depth=3, hidden_size=64, num_heads=4)}


def small(kind: str, **overrides) -> torch.nn.Module:
    return build_model(kind, {**SMALL[kind], "in_channels": 1, "image_size": 8, **overrides})


def perturb_zero_init(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random values for the zero-initialised layers (adaLN, output), so every branch counts."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model


# ---------------------------------------------------------------- patches and positions

@pytest.mark.parametrize("C, H, W, p", [(1, 8, 8, 2), (3, 28, 28, 7), (4, 12, 8, 4), (2, 6, 6, 1)])
def test_patchify_and_unpatchify_are_exact_inverses_with_the_documented_layout(C, H, W, p):
    x = torch.randn(2, C, H, W)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (H // p) * (W // p), p * p * C)
    assert torch.equal(unpatchify(tokens, p, H, W), x)
    assert torch.equal(patchify(unpatchify(tokens, p, H, W), p), tokens)
    # token i * (W / p) + j holds patch (i, j), features ordered (row, column, channel)
    for b, ch, row, col in [(0, 0, 0, 0), (1, C - 1, H - 1, W - 1), (1, C // 2, H // 2 + 1, 1)]:
        i, r, j, c = row // p, row % p, col // p, col % p
        assert tokens[b, i * (W // p) + j, (r * p + c) * C + ch] == x[b, ch, row, col]


def test_sincos_position_table_matches_the_formula():
    dim, rows, cols = 16, 3, 5
    quarter = dim // 4
    expected = torch.zeros(rows * cols, dim, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            for k in range(quarter):
                w = 10_000.0 ** (-k / quarter)
                # [sin(j w) | cos(j w) | sin(i w) | cos(i w)]: column first, then row (MAE, DiT)
                expected[i * cols + j, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = torch.tensor(
                    [math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)], dtype=torch.float64)
    table = sincos_position_embedding(dim, rows, cols)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, atol=1e-7, rtol=0)
    model = small("dit", hidden_size=16, num_heads=2)
    assert torch.equal(model.pos_embed[0], sincos_position_embedding(16, 4, 4))


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


# ---------------------------------------------------------------- DiT and U-ViT

@pytest.mark.parametrize("kind", ["dit", "uvit"])
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_output_shape_and_exact_zero_at_init(kind, learned_sigma, num_classes):
    model = small(kind, learned_sigma=learned_sigma, num_classes=num_classes)
    y = torch.tensor([3, 10]) if num_classes else None
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 999.0]), y)
    assert out.shape == (2, 2 if learned_sigma else 1, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))
    wide = small(kind, in_channels=3, out_channels=2, learned_sigma=learned_sigma)
    assert wide(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 4 if learned_sigma else 2, 8, 8)


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_output_depends_on_t_and_y_and_none_is_the_null_label(kind):
    model = perturb_zero_init(small(kind, num_classes=5))
    x = torch.randn(2, 1, 8, 8)
    x = torch.cat([x[:1], x[:1]])  # one image, two conditions
    t, y = torch.tensor([100.0, 100.0]), torch.tensor([0, 1])
    out = model(x, t, y)
    assert not torch.allclose(out[0], out[1], atol=1e-4)                        # y matters
    assert not torch.allclose(model(x, torch.tensor([100.0, 700.0]), torch.tensor([0, 0])).diff(dim=0),
                              torch.zeros(1, 1, 8, 8), atol=1e-4)                 # t matters
    assert torch.equal(model(x, t), model(x, t, torch.tensor([5, 5])))          # None = null label
    with pytest.raises(ValueError, match="unconditional"):
        small(kind)(x, t, y)


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_gradients_reach_every_parameter(kind):
    model = perturb_zero_init(small(kind, num_classes=3, learned_sigma=True, qk_norm=True))
    y = torch.tensor([0, 1, 2, 3])
    model(torch.randn(4, 1, 8, 8), torch.tensor([1.0, 50.0, 300.0, 999.0]), y).square().mean().backward()
    # every output unit of a weight; biases as a whole (attention is blind to the key bias)
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.flatten(1 if p.ndim > 1 else 0).any(-1).all()]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_time_scale_multiplies_t(kind):
    continuous = perturb_zero_init(small(kind, time_scale=1000.0))
    discrete = small(kind)
    discrete.load_state_dict(continuous.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(continuous(x, torch.tensor([0.25, 0.5])), discrete(x, torch.tensor([250.0, 500.0])))


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_time_999_and_1000_differ_under_bf16_autocast(kind):
    model = perturb_zero_init(small(kind))
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([999.0, 1000.0]))
    assert not torch.equal(out[0], out[1])


def test_dit_blocks_start_as_the_identity():
    """adaLN-Zero: all six modulation vectors start at 0, so each block returns its input
    (the zero final layer alone would hide a block that does not)."""
    model = small("dit", num_classes=3)
    c = model.embed(torch.tensor([5.0, 900.0]), torch.tensor([0, 3]))
    h = torch.randn(2, 16, 64)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)


def test_uvit_long_skips_are_last_in_first_out():
    model = perturb_zero_init(small("uvit", depth=5))
    kept, received = [], []
    for block in model.in_blocks:
        block.register_forward_hook(lambda mod, args, out: kept.append(out))
    for block in model.out_blocks:
        block.skip_linear.register_forward_pre_hook(lambda mod, args: received.append(args[0].chunk(2, -1)[1]))
    model(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 4.0]))
    assert len(kept) == len(received) == 2
    for skip, out in zip(received, reversed(kept)):
        assert torch.equal(skip, out)


@pytest.mark.parametrize("num_classes, extras", [(None, 1), (10, 2)])
def test_uvit_patch_positions_start_as_the_sin_cos_table(num_classes, extras):
    """The patch tokens' rows of the learned table start as the 2-D sin-cos table (after the
    time and class rows, which keep the paper's truncated normal); pos_init='trunc_normal'
    is the paper's init for every row.  Both stay learned."""
    model = small("uvit", num_classes=num_classes)
    assert model.extras == extras and model.pos_embed.requires_grad
    table = model.pos_embed[0].detach()
    assert torch.equal(table[extras:], sincos_position_embedding(64, 4, 4))
    assert table[:extras].abs().max() < 0.12                                       # std 0.02
    paper = small("uvit", num_classes=num_classes, pos_init="trunc_normal").pos_embed[0].detach()
    assert paper.abs().max() < 0.12 and 0.015 < paper.std() < 0.025


def test_blocks_are_the_units_fsdp_shards():
    dit, uvit = small("dit", depth=3), small("uvit", depth=5)
    assert blocks(dit) == list(dit.blocks)
    assert blocks(uvit) == [*uvit.in_blocks, *uvit.out_blocks, uvit.mid_block]


@pytest.mark.parametrize("kind, name, check", [
    ("dit", "T/4", dict(hidden_size=192, depth=6, num_heads=3, patch_size=4)),
    ("dit", "XL/8", dict(hidden_size=1152, depth=28, num_heads=16, patch_size=8)),
    ("uvit", "small", dict(hidden_size=512, depth=13, num_heads=8, patch_size=2)),
])
def test_named_sizes_and_config_round_trip(kind, name, check):
    assert set(DIT_SIZES) == {f"{w}/{p}" for w in ("T", "S", "B", "L", "XL") for p in (2, 4, 8)}
    assert set(UVIT_SIZES) == {"tiny", "small", "mid", "large", "huge"}
    cfg = model_config(kind, size=name, in_channels=3, image_size=32, num_classes=10)
    assert {k: getattr(cfg, k) for k in check} == check
    assert model_config(kind, dataclasses.asdict(cfg)) == cfg
    assert model_config(kind, json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


# Table 4 of Peebles & Xie (2023): 256 x 256 images = 32 x 32 x 4 latents, 1000 classes,
# learned sigma.  DiT's own code reports 675,129,632 for XL/2, counting its frozen
# position table (a parameter there, a buffer here).
DIT_PAPER = {"S/2": 33e6, "B/2": 130e6, "L/2": 458e6, "XL/2": 675e6}
# Table 1 of Bao et al. (2023), each size in a setting of the paper.
UVIT_PAPER = {"small": (44e6, dict(in_channels=3)),  # CIFAR-10
              "mid": (131e6, dict(in_channels=3, image_size=64, patch_size=4, num_classes=1000)),  # ImageNet 64
              "large": (287e6, dict(in_channels=4, num_classes=1000)),  # ImageNet 256 latents
              "huge": (501e6, dict(in_channels=4, num_classes=1000))}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_papers():
    with torch.device("meta"):
        dits = {name: build_model("dit", size=name, in_channels=4, image_size=32, num_classes=1000,
                                  learned_sigma=True) for name in DIT_PAPER}
        uvits = {name: build_model("uvit", {"size": name, "image_size": 32, **kw})
                 for name, (_, kw) in UVIT_PAPER.items()}
    for name, expected in DIT_PAPER.items():
        assert abs(count(dits[name]) / expected - 1) < 0.01, (name, count(dits[name]))
    assert count(dits["XL/2"]) + dits["XL/2"].pos_embed.numel() == 675_129_632
    for name, (expected, _) in UVIT_PAPER.items():
        assert abs(count(uvits[name]) / expected - 1) < 0.01, (name, count(uvits[name]))


@pytest.mark.parametrize("kind, config, match", [
    ("dit", {"size": "S/8", "image_size": 28},
     r"image size 28 is not divisible by patch size 8; valid patch sizes: \[1, 2, 4, 7, 14, 28\]"),
    ("uvit", {"size": "tiny", "image_size": 28, "patch_size": 3}, r"image size 28 .* patch size 3"),
    ("dit", {"size": "XXL/2"}, r"unknown dit size 'XXL/2'; valid: \['B/2', 'B/4', 'B/8', 'L/2', .*'XL/8'\]"),
    ("uvit", {"size": "base"}, r"unknown uvit size 'base'; valid: \['huge', 'large', 'mid', 'small', 'tiny'\]"),
    ("uvit", {"size": "tiny", "depth": 6}, r"depth .* must be odd, got 6"),
    ("uvit", {"size": "tiny", "pos_init": "zeros"},
     r"pos_init must be one of \['sincos', 'trunc_normal'\], got 'zeros'"),
    ("uvit", {"hidden_size": 66, "num_heads": 3}, r"pos_init='sincos' needs hidden_size divisible by 4, got 66"),
    ("dit", {"hidden_size": 66, "num_heads": 3}, r"divisible by 4"),
    ("dit", {"patch_size": 2.0}, r"DiTConfig.patch_size must be int"),
])
def test_bad_configs_are_refused(kind, config, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_model(kind, config)


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_images_of_another_size_are_refused(kind):
    with pytest.raises(ValueError, match=r"built for 8 x 8 images, got \(16, 16\)"):
        small(kind)(torch.randn(1, 1, 16, 16), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"image size 7 is not divisible by patch size 2"):
        patchify(torch.randn(1, 1, 7, 8), 2)


# ---------------------------------------------------------------- oracle: diffusers' DiT

def diffusers_state_dict(model) -> dict[str, torch.Tensor]:
    """hirune DiT weights under diffusers' DiTTransformer2DModel names.  diffusers keeps a
    copy of the time MLP and the class table inside every block (`norm1.emb`), splits the
    fused qkv into to_q / to_k / to_v, and calls the final adaLN and linear proj_out_1, _2."""
    sd, out = model.state_dict(), {}
    out.update({f"pos_embed.proj.{p}": sd[f"patch_embed.proj.{p}"] for p in ("weight", "bias")})
    for i in range(model.config.depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        names = {"norm1.emb.timestep_embedder.linear_1": "time_embed.0",
                 "norm1.emb.timestep_embedder.linear_2": "time_embed.2",
                 "norm1.linear": ours + "adaLN_modulation.1",
                 "attn1.to_out.0": ours + "attn.proj",
                 "ff.net.0.proj": ours + "mlp.0",
                 "ff.net.2": ours + "mlp.2"}
        for their_name, our_name in names.items():
            for p in ("weight", "bias"):
                out[f"{theirs}{their_name}.{p}"] = sd[f"{our_name}.{p}"]
        out[theirs + "norm1.emb.class_embedder.embedding_table.weight"] = sd["class_embed.weight"]
        for p in ("weight", "bias"):
            for name, part in zip(("to_q", "to_k", "to_v"), sd[f"{ours}attn.qkv.{p}"].chunk(3)):
                out[f"{theirs}attn1.{name}.{p}"] = part
    for their_name, our_name in {"proj_out_1": "final_layer.adaLN_modulation.1",
                                 "proj_out_2": "final_layer.linear"}.items():
        for p in ("weight", "bias"):
            out[f"{their_name}.{p}"] = sd[f"{our_name}.{p}"]
    return out


def test_dit_equals_diffusers_dit_transformer_with_the_same_weights():
    """hirune's DiT T/2 (8 x 8 x 4, 10 classes, learned sigma) and diffusers' model with the
    same weights agree to float64 round-off.  Two settings make diffusers compute DiT's
    own function: norm_eps=1e-6 (DiT's LayerNorm eps; diffusers' default 1e-5 reaches the
    MLP's LayerNorm) and downscale_freq_shift=0 in each block's time embedding: diffusers'
    DiT uses frequencies exp(-ln(10^4) k / (128 - 1)), DiT's code exp(-ln(10^4) k / 128)
    (hirune and DiT agree).  Each of the two alone is shown to change the output."""
    diffusers = pytest.importorskip("diffusers")
    model = perturb_zero_init(build_model("dit", size="T/2", in_channels=4, image_size=8, num_classes=10,
                                          learned_sigma=True)).double()
    c = model.config
    theirs = diffusers.DiTTransformer2DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads, in_channels=4,
        out_channels=c.output_channels, num_layers=c.depth, sample_size=c.image_size, patch_size=c.patch_size,
        num_embeds_ada_norm=c.num_classes, norm_eps=1e-6).double().eval()  # eval: no label dropout
    theirs.load_state_dict(diffusers_state_dict(model), strict=True)  # every diffusers weight mapped
    # time in float32 for both (hirune's protocol; diffusers computes the sinusoids in float32 anyway)
    x, t = torch.randn(4, 4, 8, 8, dtype=torch.float64), torch.tensor([0.0, 3.0, 500.0, 999.0])
    y = torch.tensor([0, 9, 10, 4])  # 10: the null label in both
    with torch.no_grad():
        ours = model(x, t, y)
        shifted = theirs(x, t, class_labels=y).sample
        for block in theirs.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        reference = theirs(x, t, class_labels=y).sample
        for block in theirs.transformer_blocks:
            block.norm3.eps = 1e-5
        default_eps = theirs(x, t, class_labels=y).sample
    assert ours.shape == reference.shape == (4, 8, 8, 8)  # (prediction | variance) on dim 1 in both
    assert ours.abs().mean() > 0.1
    assert (ours - reference).abs().max() < 1e-10
    assert (ours - shifted).abs().max() > 1e-3  # diffusers' own frequencies: a different function
    assert (ours - default_eps).abs().max() > 1e-7  # and its default eps is visible too


# ---------------------------------------------------------------- training

def test_dit_trains_on_the_digits_and_its_checkpoint_reloads(tmp_path):
    from hirune.trainer import TrainConfig, load_run, train

    cfg = TrainConfig(dataset="digits", model="dit", model_config={"size": "T/2", "depth": 2},
                      class_conditional=True, process="ddpm", steps=20, batch_size=64, lr=2e-3, warmup=2,
                      log_every=1, ckpt_every=20, sample_every=0, out=str(tmp_path / "dit"))
    run = train(cfg, progress=False)
    assert run.model.config.image_size == 8 and run.model.config.in_channels == 1  # from the data
    assert run.model.config.num_classes == 10 and run.model.config.time_scale == 1.0
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "dit" / "metrics.jsonl")]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3, losses  # starts at ~1 (zero output)
    loaded = load_run(tmp_path / "dit", use_ema=False)
    assert loaded.model.config == run.model.config
    for (name, a), b in zip(run.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 10])
    run.model.eval()
    assert torch.equal(loaded.model(x, t, y), run.model(x, t, y))
