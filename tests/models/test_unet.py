"""The UNet (hirune.models.unet): shapes at odd and even sizes, variants, time scale,
channels-last memory format, activation checkpointing, the denoiser protocol through DDIM /
DDPM, and the named sizes with their parameter counts.  What it shares with every network
(zero at init, gradients, conditioning) is tested in test_networks.py."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import hirune as H
from hirune.models import UNET_SIZES, build_model, model_config
from hirune.nn import CrossAttention2d
from networks import perturb_zero_init, unet


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_output_shape(size, learned_sigma, num_classes):
    model = unet(learned_sigma=learned_sigma, num_classes=num_classes)
    x = torch.randn(2, 1, size, size)
    y = torch.tensor([3, 10]) if num_classes else None
    out = model(x, torch.tensor([0.0, 999.0]), y)
    assert out.shape == (2, 2 if learned_sigma else 1, size, size)


@pytest.mark.parametrize("variant", [dict(resblock_updown=True), dict(use_scale_shift_norm=False),
                                     dict(in_channels=3, out_channels=6, channels=8, head_channels=4)])
def test_unet_variants_keep_shapes_at_odd_sizes(variant):
    model = unet(**variant)
    c = model.config
    x = torch.randn(2, c.in_channels, 28, 28)
    assert model(x, torch.tensor([5.0, 7.0])).shape == (2, c.output_channels, 28, 28)


def test_time_scale_multiplies_t():
    continuous = perturb_zero_init(unet(time_scale=1000.0))
    discrete = unet()
    discrete.load_state_dict(continuous.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(continuous(x, torch.tensor([0.25, 0.5])),
                               discrete(x, torch.tensor([250.0, 500.0])))


def test_channels_last_matches_contiguous():
    model = perturb_zero_init(unet(num_classes=3)).eval()
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out_cl = cl(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out_cl, model(x, t, y), atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and both together with bf16 autocast
        out_bf16 = cl(x.contiguous(memory_format=torch.channels_last), t, y)
    assert out_bf16.isfinite().all() and (out_bf16.float() - out_cl).abs().max() < 0.1


def test_checkpointing_gives_identical_gradients_and_saves_memory():
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 700.0])
    grads, saved = [], []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = perturb_zero_init(unet(dropout=0.3, use_checkpoint=use_checkpoint))
        torch.manual_seed(1)  # the same dropout masks in both runs
        count = [0]

        def pack(tensor, count=count):
            count[0] += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(x, t).square().sum()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        saved.append(count[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=0, rtol=0, msg=name)
    assert saved[1] < saved[0] / 2  # the blocks' activations were not kept


def test_unet_as_denoiser_through_ddim():
    model = perturb_zero_init(unet(num_classes=10), std=0.01).eval()
    denoiser = H.Denoiser(model, H.DiscreteVP(), "eps")
    with torch.no_grad():
        out = H.sample(denoiser, (2, 1, 28, 28), sampler="ddim", steps=3, cond={"y": torch.tensor([1, 10])})
    assert out.x.shape == (2, 1, 28, 28) and out.x.isfinite().all() and out.nfe == 3
    learned = H.Denoiser(perturb_zero_init(unet(learned_sigma=True), std=0.01).eval(), H.DiscreteVP(),
                         "eps", learned_variance=True)
    with torch.no_grad():
        out = H.sample(learned, (2, 1, 28, 28), sampler="ddpm", steps=3, variance="learned")
    assert out.x.shape == (2, 1, 28, 28) and out.x.isfinite().all()


def test_named_sizes_and_their_parameter_counts():
    counts = {name: sum(p.numel() for p in build_model("unet", size=name, in_channels=1).parameters())
              for name in UNET_SIZES}
    # as written in the comments of UNET_SIZES; "tiny" equals diffusers' UNet2DModel(
    # block_out_channels=(32, 64, 64), layers_per_block=2) at 1 channel: 1,623,169
    assert counts == {"tiny": 1_623_169, "small": 9_922_753, "base": 35_741_697}
    cfg = model_config("unet", size="tiny", in_channels=3, num_classes=10)
    assert cfg.channels == 32 and cfg.num_classes == 10
    assert model_config("unet", dataclasses.asdict(cfg)) == cfg  # round trip through a dict


@pytest.mark.parametrize("film", [False, True])
def test_a_groupnorm_of_one_channel_a_group_erases_the_added_time_embedding(film):
    """DDPM's conditioning, GroupNorm(h + emb): where a level has as many channels as
    groups (the tiny UNet's 32-channel level, as in diffusers' twin), each group is one
    channel, and its normalisation removes any per-channel constant: those ResBlocks ignore
    t, and their emb_proj gets only rounding as gradient (float64: a millionth of the
    smallest elsewhere).  ADM's FiLM, GroupNorm(h) * (1 + scale) + shift, keeps t everywhere."""
    config = model_config("unet", size="tiny", in_channels=1, use_scale_shift_norm=film)
    net = build_model("unet", **dataclasses.asdict(config)).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # every layer non-zero, so every path carries gradient
            p.copy_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    x, t = torch.randn(4, 1, 28, 28, generator=generator, dtype=torch.float64), torch.tensor([3.0, 300.0, 600.0, 900.0])
    net(x, t).square().mean().backward()
    blocks = {name: module for name, module in net.named_modules() if hasattr(module, "emb_proj")}
    grads = {name: block.emb_proj.weight.grad.norm().item() for name, block in blocks.items()}
    erased = {name for name, block in blocks.items() if block.norm2.num_channels == config.channels}
    assert len(erased) == 5                                  # 2 encoder + 3 decoder blocks at 28 x 28
    live = min(grads[name] for name in grads if name not in erased)
    assert live > 1e-9
    if film:
        assert min(grads[name] for name in erased) > 1e-9
    else:
        assert max(grads[name] for name in erased) < 1e-6 * live


# --- unCLIP's decoder: the CLIP image embedding (embed_dim) -------------------------------

def _embed_dependence(model, **cond) -> float:
    """How much the output moves when only the image embedding changes (0: ignored)."""
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    z = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    with torch.no_grad():
        return float((model(x, t, image_embed=z, **cond) - model(x, t, image_embed=z.flip(0), **cond)).abs().max())


@pytest.mark.parametrize("text", [False, True])
def test_the_image_embedding_reaches_the_output_by_both_paths(text):
    cond = {"context": torch.randint(30, (2, 5))} if text else {}
    extra = {"context_dim": 24, "context_vocab": 30} if text else {}
    model = perturb_zero_init(unet(embed_dim=16, **extra)).eval()
    assert _embed_dependence(model, **cond) > 1e-3
    for path in ("to_emb", "to_tokens"):  # either path alone carries it: the time embedding, the context tokens
        one = copy.deepcopy(model)
        getattr(one.clip_embed, path).weight.data.zero_()
        assert _embed_dependence(one, **cond) > 1e-4, path
    # the harness catches a network that ignores the embedding: both projections cut
    broken = copy.deepcopy(model)
    broken.clip_embed.to_emb.weight.data.zero_()
    broken.clip_embed.to_tokens.weight.data.zero_()
    assert _embed_dependence(broken, **cond) == 0.0


def test_the_embedding_tokens_follow_the_caption_tokens_or_stand_alone():
    seen = []
    hook = lambda module, args: seen.append((args[1], args[2]))  # noqa: E731 -- (context, mask) of cross-attention
    z = torch.randn(2, 16)
    for extra, width, m in (({"context_dim": 24, "context_vocab": 30}, 24, 5), ({}, 16, 0)):
        model = perturb_zero_init(unet(embed_dim=16, embed_tokens=3, **extra)).eval()
        blocks = [b for b in model.modules() if isinstance(b, CrossAttention2d)]
        assert blocks and all(b.attn.k.in_features == b.attn.v.in_features == width for b in blocks)  # keys, values read it
        handle = blocks[0].register_forward_pre_hook(hook)
        mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
        cond = {"context": torch.randint(1, 30, (2, m)), "context_mask": mask} if m else {}
        seen.clear()
        with torch.no_grad():
            model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), image_embed=z, **cond)
        handle.remove()
        context, mask = seen[0]
        tokens = model.clip_embed.to_tokens(z).view(2, 3, width)
        assert context.shape == (2, m + 3, width)
        torch.testing.assert_close(context[:, m:], tokens)       # the embedding's tokens come last
        if m:
            assert mask[:, m:].all() and torch.equal(mask[:, :m], cond["context_mask"])
        else:
            assert mask is None


def test_image_embed_is_refused_where_it_does_not_fit():
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="needs it"):
        unet(embed_dim=16)(x, t)
    with pytest.raises(ValueError, match="image_embed goes with a UNet built with embed_dim"):
        unet()(x, t, image_embed=torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"image_embed of shape \(2, 8\) is not valid; valid: \(B, 16\)"):
        unet(embed_dim=16)(x, t, image_embed=torch.zeros(2, 8))
    for bad in ({"embed_dim": 0}, {"embed_dim": 16, "embed_tokens": 0}):
        with pytest.raises(ValueError, match="must be positive"):
            unet(**bad)
