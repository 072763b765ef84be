"""CogVideoX's expert transformer (hirune.models.cogvideox): exactly 0 at initialisation;
diffusers' CogVideoXTransformer3DModel with the same weights gives the same output (RoPE
built by diffusers' pipeline, at the base grid and interpolated below it), and a wrong axis
split or swapped rows and columns is caught there; the expert modulation is the shared one
with untied text rows; learned positions; frame packing (each example's real tokens as if
alone, padding frames 0, a variant without the mask caught); input and config checks; the
named sizes' parameter counts (2b / 5b equal to diffusers' at the same config)."""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch

from hirune.models import COGVIDEOX_SIZES, blocks, build_model, model_config
from hirune.models.cogvideox import sincos_3d
from networks import perturb_zero_init

# a small model: head_dim 32, a time embedding wider than D, 24-wide text tokens
SMALL = dict(in_channels=4, sample_frames=3, sample_size=8, patch_size=2, hidden_size=64, num_heads=2, depth=2,
             time_embed_dim=48, context_dim=24)


def small(**overrides) -> torch.nn.Module:
    return build_model("cogvideox", {**SMALL, **overrides})


def randomized(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved (zero modulations, LayerNorm affines): every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def inputs(B=2, T=3, H=8, W=8, M=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, H, W, generator=g, dtype=dtype)
    t = torch.linspace(3.0, 900.0, B)
    return x, t, torch.randn(B, M, 24, generator=g, dtype=dtype)


def test_zero_init_gives_exactly_zero_output():
    model = small(num_classes=3, learned_sigma=True)
    x, t, context = inputs(B=3)
    out = model(x, t, torch.tensor([0, 2, 3]), context=context, frames=torch.tensor([3, 1, 2]))
    assert out.shape == (3, 8, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))
    assert len(blocks(model)) == 2 and all(b is m for b, m in zip(blocks(model), model.blocks))


# ---------------------------------------------------------------- diffusers as the oracle

def diffusers_state_dict(model) -> dict[str, torch.Tensor]:
    """hirune's CogVideoX weights under diffusers' CogVideoXTransformer3DModel names.  The
    one change beyond the names: the output linear's rows, (patch row, patch column,
    channel) in hirune's `unpatchify`, (channel, patch row, patch column) in diffusers'."""
    c = model.config
    names = {"patch_embed.proj": "patch_embed.proj", "text_proj": "patch_embed.text_proj",
             "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "final_layer.norm_final": "norm_final", "final_layer.modulation": "norm_out.linear",
             "final_layer.norm": "norm_out.norm", "final_layer.linear": "proj_out"}
    for i in range(c.depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in [("norm1.linear", "norm1.linear"), ("norm1.norm", "norm1.norm"), ("norm2.linear", "norm2.linear"),
                     ("norm2.norm", "norm2.norm"), ("attn.q", "attn1.to_q"), ("attn.k", "attn1.to_k"),
                     ("attn.v", "attn1.to_v"), ("attn.q_norm", "attn1.norm_q"), ("attn.k_norm", "attn1.norm_k"),
                     ("attn.proj", "attn1.to_out.0"), ("mlp.0", "ff.net.0.proj"), ("mlp.2", "ff.net.2")]:
            names[ours + a] = theirs + b
    out = {}
    for key, value in model.state_dict().items():
        module, param = key.rsplit(".", 1)
        out[f"{names[module]}.{param}"] = value
    p, C = c.patch_size, c.output_channels
    for param in ("weight", "bias"):
        w = model.final_layer.linear.state_dict()[param]
        out[f"proj_out.{param}"] = w.unflatten(0, (p, p, C)).movedim(2, 0).flatten(0, 2)
    return out


def diffusers_twin(model, sample_hw: tuple[int, int] | None = None):
    """diffusers' CogVideoXTransformer3DModel at the model's config, holding its weights;
    sample_hw: its sample (height, width) in latents, whose token grid its pipeline maps RoPE
    onto (default the model's square sample_size: then its base is the model's)."""
    from diffusers import CogVideoXTransformer3DModel

    c = model.config
    height, width = sample_hw or (c.sample_size, c.sample_size)
    theirs = CogVideoXTransformer3DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.head_dim, in_channels=c.in_channels,
        out_channels=c.output_channels, time_embed_dim=c.cond_dim, text_embed_dim=c.context_dim, num_layers=c.depth,
        sample_width=width, sample_height=height, sample_frames=(c.sample_frames - 1) * 4 + 1,
        patch_size=c.patch_size, patch_size_t=None, use_rotary_positional_embeddings=True, norm_eps=c.norm_eps)
    theirs.load_state_dict(diffusers_state_dict(model), strict=True)           # every diffusers weight mapped
    return theirs.to(next(model.parameters()).dtype).eval()


def diffusers_output(theirs, x, t, context):
    """The pipeline's call: its RoPE table (`_prepare_rotary_positional_embeddings`, with the
    latents' own height and width: no VAE here), latents (B, T, C, H, W) in and out."""
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline

    pipe = types.SimpleNamespace(vae_scale_factor_spatial=1, transformer=theirs)
    T, H, W = x.shape[2:]
    rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, H, W, T, x.device)
    with torch.no_grad():
        out = theirs(x.transpose(1, 2), context, t, image_rotary_emb=rope, return_dict=False)[0]
    return out.transpose(1, 2)


@pytest.mark.parametrize("T, H, W, base_hw, scaling", [
    (3, 8, 8, None, "extrapolate"), (3, 8, 8, None, "interpolate"), (5, 8, 8, None, "extrapolate"),
    (3, 4, 4, None, "interpolate"), (3, 8, 16, (8, 16), "extrapolate"), (3, 4, 8, (8, 16), "interpolate")])
def test_cogvideox_equals_diffusers_with_the_same_weights(T, H, W, base_hw, scaling):
    """At the pipeline's base grid (the sample size in tokens: integer positions, any number
    of frames), and below it with the base's aspect ratio, where the pipeline maps the grid
    onto the base as rope_scaling='interpolate' does (time stays integer in diffusers: these
    cases interpolate at the base's frames).  A grid of another aspect ratio the pipeline
    centres in an aspect-preserving crop of the base instead (not per axis; see
    hirune.nn.rope).  In float64 but for RoPE, which diffusers computes in float32 (both here)."""
    pytest.importorskip("diffusers")
    base = None if base_hw is None else (3, base_hw[0] // 2, base_hw[1] // 2)
    model = randomized(small(rope_scaling=scaling, rope_base=base)).double().eval()
    theirs = diffusers_twin(model, base_hw)
    x, t, context = inputs(T=T, H=H, W=W, dtype=torch.float64)
    with torch.no_grad():
        ours = model(x, t, context=context)
    reference = diffusers_output(theirs, x, t, context)
    assert ours.shape == reference.shape == x.shape and ours.abs().mean() > 0.1
    assert (ours - reference).abs().max() < 1e-5


def test_the_oracle_catches_a_wrong_rope(monkeypatch):
    """Broken variants the diffusers comparison rejects: 3-D RoPE with t : y : x = 1/2 : 1/4 :
    1/4, rows and columns swapped (a 4 x 8 token grid), and extrapolated below the base where
    diffusers' pipeline interpolates."""
    pytest.importorskip("diffusers")
    import hirune.models.cogvideox as cogvideox
    import hirune.nn.rope as rope

    model = randomized(small(rope_base=(3, 4, 8))).double().eval()
    x, t, context = inputs(T=3, H=8, W=16, dtype=torch.float64)
    reference = diffusers_output(diffusers_twin(model, (8, 16)), x, t, context)
    real_positions = cogvideox.video_positions

    def swapped_positions(*args, **kwargs):                                # rows read as columns and back
        t, y, x = real_positions(*args, **kwargs)
        return t, x, y

    with torch.no_grad():
        assert (model(x, t, context=context) - reference).abs().max() < 1e-5
        with monkeypatch.context() as m:
            m.setattr(rope, "axis_split", lambda d: (d // 2, d // 4, d // 4))
            wrong_split = model(x, t, context=context)
        with monkeypatch.context() as m:
            m.setattr(cogvideox, "video_positions", swapped_positions)
            swapped = model(x, t, context=context)
        square = randomized(small()).double().eval()                       # base 4 x 4 tokens, a 2 x 2 grid
        small_x = x[..., :4, :4]
        extrapolated = square(small_x, t, context=context)
        interpolated = diffusers_output(diffusers_twin(square), small_x, t, context)
    for broken, right in [(wrong_split, reference), (swapped, reference), (extrapolated, interpolated)]:
        assert (broken - right).abs().max() > 1e-3


# ---------------------------------------------------------------- experts, positions, text

def test_expert_modulation_is_the_shared_one_with_its_own_text_rows():
    """experts=False is experts=True with the text's (shift, scale, gate) tied to the video's:
    equal outputs when the rows are copied, different ones once they differ."""
    expert = randomized(small())
    shared = small(experts=False)
    assert expert.blocks[0].norm1.linear.out_features == 6 * 64 and shared.blocks[0].norm1.linear.out_features == 3 * 64
    state = {k: v for k, v in expert.state_dict().items()}
    for key in [k for k in state if ".norm1.linear." in k or ".norm2.linear." in k]:
        state[key] = state[key][: 3 * 64]                                  # the video's rows
    shared.load_state_dict(state)
    x, t, context = inputs()
    tied = copy.deepcopy(expert)
    with torch.no_grad():
        for block in tied.blocks:
            for norm in (block.norm1, block.norm2):
                norm.linear.weight[3 * 64:] = norm.linear.weight[: 3 * 64]
                norm.linear.bias[3 * 64:] = norm.linear.bias[: 3 * 64]
        assert torch.allclose(tied(x, t, context=context), shared(x, t, context=context), atol=1e-6)
        assert (expert(x, t, context=context) - shared(x, t, context=context)).abs().max() > 1e-2


def test_learned_positions_start_as_3d_sincos_bound_the_size_and_are_learned():
    model = randomized(small(positions="learned", context_dim=None, sample_frames=2))
    table = small(positions="learned", sample_frames=2).pos_embed
    assert table.shape == (2, 4, 4, 64) and torch.equal(table.detach(), sincos_3d(64, 2, 4, 4))
    assert torch.equal(sincos_3d(64, 2, 4, 4)[1, 2, 3, 16:], sincos_3d(64, 1, 4, 4)[0, 2, 3, 16:])  # space as 2-D
    x = torch.randn(2, 4, 2, 8, 8)
    model(x, torch.tensor([5.0, 50.0])).square().mean().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    # the table is the only position: swapping the frames swaps nothing else, so the output changes
    with torch.no_grad():
        out, flipped = model(x, torch.tensor([5.0, 50.0])), model(x.flip(2), torch.tensor([5.0, 50.0]))
    assert (out.flip(2) - flipped).abs().max() > 1e-3
    assert model.rope(2, 4, 4, None, "cpu") is None
    model(torch.randn(1, 4, 1, 4, 6), torch.tensor([1.0]))                 # smaller than the table: fine
    for shape, message in [((1, 4, 3, 8, 8), r"x frames=3 is not valid for the learned position table; valid: at "
                                              r"most 2 \(sample_frames=2, sample_size=8\)"),
                           ((1, 4, 2, 8, 10), r"x width=10 is not valid for the learned position table; valid: at "
                                              r"most 8")]:
        with pytest.raises(ValueError, match=message):
            model(torch.randn(shape), torch.tensor([1.0]))


def test_rope_positions_reach_any_grid_and_order_matters():
    model = randomized(small(context_dim=None))
    x = torch.randn(1, 4, 5, 6, 12)                                         # more frames, another shape
    with torch.no_grad():
        out = model(x, torch.tensor([7.0]))
        flipped = model(x.flip(2), torch.tensor([7.0]))
    assert out.shape == x.shape and model.pos_embed is None
    assert (out.flip(2) - flipped).abs().max() > 1e-3                       # RoPE tells the frames apart


def test_text_token_ids_padding_and_time_scale():
    """The network's own text encoder (token ids) with padding: padded ids change nothing;
    time_scale multiplies t before the embedding."""
    model = randomized(small(context_dim=32, context_vocab=20, context_len=6, time_scale=10.0))
    x = torch.randn(2, 4, 3, 8, 8)
    ids = torch.tensor([[1, 5, 7, 0, 0, 0], [1, 9, 3, 4, 2, 0]])
    mask = ids != 0
    other = ids.masked_fill(~mask, 11)
    with torch.no_grad():
        a = model(x, torch.tensor([3.0, 9.0]), context=ids, context_mask=mask)
        assert torch.allclose(a, model(x, torch.tensor([3.0, 9.0]), context=other, context_mask=mask), atol=1e-6)
        assert (a - model(x, torch.tensor([3.0, 9.0]), context=other)).abs().max() > 1e-3  # unmasked: read
        unscaled = model.__class__(dataclasses.replace(model.config, time_scale=1.0))
        unscaled.load_state_dict(model.state_dict())
        assert torch.allclose(a, unscaled(x, torch.tensor([30.0, 90.0]), context=ids, context_mask=mask), atol=1e-6)


def test_gradients_reach_every_parameter_but_the_last_blocks_text_updates():
    """Every parameter gets a gradient, each row of a weight, but the rows of the last block
    that only update the text tokens (its attention's text gate, its MLP's text shift, scale
    and gate): nothing reads the text after the last block (in CogVideoX as here)."""
    model = randomized(small(num_classes=3, context_vocab=24, context_len=6, context_dim=32))
    ids = torch.arange(24).reshape(4, 6)                                    # every token id
    y = torch.tensor([0, 1, 2, 3])                                          # every class and the null label
    out = model(torch.randn(4, 4, 2, 8, 8), torch.tensor([1.0, 50.0, 300.0, 999.0]), y, context=ids)
    out.square().mean().backward()
    D, last = 64, model.blocks[-1]
    dead = {last.norm1.linear: slice(5 * D, 6 * D), last.norm2.linear: slice(3 * D, 6 * D)}
    for layer, rows in dead.items():
        assert not layer.weight.grad[rows].any() and not layer.bias.grad[rows].any()
        layer.weight.grad[rows] = layer.bias.grad[rows] = 1.0                # the rest must still be reached
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.flatten(1 if p.ndim > 1 else 0).any(-1).all()]
    assert not missing, f"no gradient reaches {missing}"


# ---------------------------------------------------------------- frame packing

PACKED = [3, 1, 2]   # a 3-frame video, a 1-frame image padded to 3, a 2-frame clip


@pytest.mark.parametrize("settings", [dict(), dict(rope_scaling="interpolate"), dict(positions="learned"),
                                      dict(experts=False)], ids=["extrapolate", "interpolate", "learned", "shared"])
def test_packed_examples_get_the_output_they_get_alone(settings):
    """Each example's real frames and real caption tokens, run alone, give the output its
    real frames get in the packed batch (to 1e-5); the padding frames' outputs are 0; and a
    variant that forgets the frames in the key mask is caught."""
    model = randomized(small(**settings)).eval()
    x, t, context = inputs(B=3, T=3, M=6)
    context_mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] * 5 + [False]])
    frames = torch.tensor(PACKED)
    with torch.no_grad():
        packed = model(x, t, context=context, context_mask=context_mask, frames=frames)
        for b, f in enumerate(PACKED):
            real = context_mask[b]
            alone = model(x[b:b + 1, :, :f], t[b:b + 1], context=context[b:b + 1, real])
            assert (packed[b:b + 1, :, :f] - alone).abs().max() < 1e-5, (b, f)
            assert torch.equal(packed[b, :, f:], torch.zeros_like(packed[b, :, f:]))
        text_only = model.key_mask
        model.key_mask = lambda text_mask, frames, *a: text_only(text_mask, None, *a)   # forgets the frames
        forgetful = model(x, t, context=context, context_mask=context_mask, frames=frames)
    assert (forgetful[1:2, :, :1] - packed[1:2, :, :1]).abs().max() > 1e-3


# ---------------------------------------------------------------- reference attention

@pytest.mark.parametrize("settings", [dict(), dict(rope_scaling="interpolate"), dict(positions="learned")],
                         ids=["extrapolate", "interpolate", "learned"])
def test_reference_attention_of_a_row_to_itself_changes_nothing(settings):
    """reference=True with each row its own reference: every score appears twice, so the
    rows get exactly their plain output (1e-5), with padded captions and packed frames; the
    references always get the output they get alone.  With another reference the rows
    change.  A variant whose reference keys are rotated one frame off is caught."""
    model = randomized(small(**settings)).eval()
    x, t, context = inputs(B=2, T=3, M=6)
    cond = dict(context=context, context_mask=torch.tensor([[True] * 6, [True] * 3 + [False] * 3]),
                frames=torch.tensor([3, 2]))
    twice = {k: torch.cat([v, v]) for k, v in cond.items()}
    with torch.no_grad():
        plain = model(x, t, **cond)
        own = model(torch.cat([x, x]), torch.cat([t, t]), **twice, reference=True)
        other = model(torch.cat([x, x.flip(2)]), torch.cat([t, t]), **twice, reference=True)
        flipped_alone = model(x.flip(2), t, **cond)
    assert (own[:2] - plain).abs().max() < 1e-5 and (own[2:] - plain).abs().max() < 1e-5
    assert (other[2:] - flipped_alone).abs().max() < 1e-5          # the references read nothing of the rows
    assert (other[:2] - plain).abs().max() > 1e-3                   # the rows read the references
    if settings.get("positions") == "learned":
        return
    rope = model.rope

    def one_frame_off(T, rows, cols, frames, device):             # the reference's block rotated by another table
        cos, sin = rope(T, rows, cols, None, device)
        shift = rows * cols
        return (torch.stack([cos, cos, cos.roll(shift, 0), cos.roll(shift, 0)]),
                torch.stack([sin, sin, sin.roll(shift, 0), sin.roll(shift, 0)]))

    model.rope = one_frame_off
    with torch.no_grad():
        off = model(torch.cat([x, x]), torch.cat([t, t]), **twice, reference=True)
    assert (off[:2] - plain).abs().max() > 1e-3


def test_reference_attention_needs_an_even_batch():
    x, t, context = inputs(B=3)
    with pytest.raises(ValueError, match="even batch"):
        small()(x, t, context=context, reference=True)


def test_bad_input_is_refused_naming_what_is_valid():
    model = small()
    x, t, context = inputs()
    cases = [(dict(x=torch.randn(2, 4, 3, 9, 8)), r"x height=9 is not valid; valid: a multiple of patch_size=2 "
                                                  r"\(e.g. 8 or 10\)"),
             (dict(x=torch.randn(2, 4, 3, 8, 6 + 1)), r"x width=7 is not valid; valid: a multiple of patch_size=2"),
             (dict(x=torch.randn(2, 3, 3, 8, 8)), r"x of shape \(2, 3, 3, 8, 8\) is not valid; valid: \(B, 4, T, H, "
                                                  r"W\) latents"),
             (dict(frames=torch.tensor([3, 4])), r"frames=\[3, 4\] is not valid; valid: each in 1 .. 3"),
             (dict(frames=torch.tensor([0, 1])), r"frames=\[0, 1\] is not valid; valid: each in 1 .. 3"),
             (dict(frames=torch.tensor([1.0, 2.0])), r"frames of shape \(2,\) torch.float32 is not valid; valid: "
                                                     r"\(2,\) int64")]
    for given, message in cases:
        args = {"x": x, "frames": None, **given}
        with pytest.raises(ValueError, match=message):
            model(args["x"], t, context=context, frames=args["frames"])
    with pytest.raises(ValueError, match="this CogVideoX is text-conditioned"):
        model(x, t)
    with pytest.raises(ValueError, match="class labels given to an unconditional CogVideoX"):
        model(x, t, torch.tensor([0, 1]), context=context)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_heads=4), r"num_heads=4 is not valid for hidden_size=64 with 3-D RoPE: head_dim=16"),  # fine: 16
    (dict(hidden_size=48, num_heads=2), r"num_heads=2 is not valid for hidden_size=48 with 3-D RoPE: head_dim=24; "
                                        r"valid: hidden_size / num_heads a multiple of 16"),
    (dict(hidden_size=72, num_heads=1, positions="learned"), r"hidden_size=72 is not valid with positions='learned'"),
    (dict(positions="sincos"), r"positions='sincos' is not valid; valid: \['rope3d', 'learned'\]"),
    (dict(rope_scaling="ntk"), r"rope_scaling='ntk' is not valid; valid: \['extrapolate', 'interpolate'\]"),
    (dict(rope_base=(3, 4)), r"rope_base=\(3, 4\) is not valid; valid: None or \(T, H, W\)"),
    (dict(patch_size=3), r"patch_size=3 is not valid for sample_size=8; valid: \[1, 2, 4, 8\]"),
    (dict(num_heads=3), r"num_heads=3 is not valid for hidden_size=64; valid: a divisor of it"),
    (dict(depth=0), r"depth=0 is not valid; valid: a positive int"),
])
def test_bad_configs_are_refused_naming_the_key(overrides, message):
    if overrides == dict(num_heads=4):
        assert small(num_heads=4).config.head_dim == 16                 # the smallest head 3-D RoPE splits
        return
    with pytest.raises(ValueError, match=message):
        small(**overrides)


# ---------------------------------------------------------------- named sizes

def count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_named_sizes_and_their_parameter_counts():
    """tiny and small for 4-channel latents with 384-wide text tokens (MiniLM); 2b and 5b at
    diffusers' CogVideoX widths (16 channels, T5's 4096) equal diffusers' own count, on the
    meta device (no memory)."""
    assert model_config("cogvideox", size="tiny") == model_config("cogvideox")    # the default is tiny
    counts = {size: count(build_model("cogvideox", size=size, in_channels=4, context_dim=384))
              for size in ("tiny", "small")}
    assert counts == {"tiny": 1_706_256, "small": 43_339_024}
    pytest.importorskip("diffusers")
    from diffusers import CogVideoXTransformer3DModel

    for size, expected in [("2b", 1_693_783_872), ("5b", 5_570_283_072)]:
        with torch.device("meta"):
            ours = build_model("cogvideox", size=size, in_channels=16, context_dim=4096)
            s = COGVIDEOX_SIZES[size]
            theirs = CogVideoXTransformer3DModel(num_attention_heads=s["num_heads"], attention_head_dim=64,
                                                 num_layers=s["depth"], time_embed_dim=512,
                                                 use_rotary_positional_embeddings=True)
        assert count(ours) == count(theirs) == expected, size


def test_recomputed_blocks_give_exactly_the_plain_gradients():
    """The expert blocks return (video, text): activation recomputation wraps them unchanged."""
    from hirune.models.recompute import recompute_blocks

    model = randomized(small())
    x, t, context = inputs()

    def grads():
        model.zero_grad()
        model(x, t, context=context, frames=torch.tensor([3, 2])).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    assert recompute_blocks(model) == 2
    assert all(torch.equal(a, b) for a, b in zip(plain, grads()))
