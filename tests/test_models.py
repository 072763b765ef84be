"""The networks: shapes at odd and even sizes, zero init, gradients, conditioning, precision,
memory format, checkpointing, the denoiser protocol, configs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import hirune as H
from hirune.models import UNET_SIZES, MLPConfig, UNetConfig, build_model, model_config
from hirune.nn import norm_groups

# Four levels, so 28 -> 14 -> 7 -> 4 and 8 -> 4 -> 2 -> 1 exercise odd sizes; attention at 1/2.
SMALL = dict(channels=16, channel_mult=(1, 1, 2, 2), num_res_blocks=1, attention_resolutions=(2,),
             head_channels=8)


def unet(**overrides) -> torch.nn.Module:
    return build_model("unet", {**SMALL, "in_channels": 1, **overrides})


def perturb_zero_init(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Give the zero-initialised layers (and GroupNorm biases) random values, so that every
    branch contributes and every parameter receives a gradient."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return model


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


def test_group_norm_groups_for_small_channel_counts():
    assert [norm_groups(c) for c in (3, 8, 16, 32, 48, 128, 192)] == [3, 8, 16, 32, 24, 32, 32]


def test_zero_init_gives_exactly_zero_output():
    model = unet(num_classes=4, learned_sigma=True)
    out = model(torch.randn(3, 1, 28, 28), torch.tensor([0.0, 10.0, 999.0]), torch.tensor([0, 3, 4]))
    assert torch.equal(out, torch.zeros_like(out))
    mlp = build_model("mlp", dim=2, num_classes=3, out_mult=2)
    out = mlp(torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 4) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_gradients_reach_every_parameter(kind):
    if kind == "unet":
        # 28 x 28 (4 x 4 at the bottom): at 1 x 1, GroupNorm with one channel per group
        # outputs its bias alone and passes no gradient back
        model = unet(num_classes=3, learned_sigma=True, resblock_updown=True)
        x = torch.randn(4, 1, 28, 28)
    else:
        model, x = build_model("mlp", dim=2, num_classes=3, out_mult=2), torch.randn(4, 2)
    perturb_zero_init(model)
    y = torch.tensor([0, 1, 2, 3])  # every class and the null label: every embedding row is used
    model(x, torch.tensor([1.0, 50.0, 300.0, 999.0]), y).square().mean().backward()
    # every parameter, and every output unit of a weight (each row of a linear layer or the
    # class table, each output channel of a conv); biases only as a whole, since attention
    # is blind to the key bias (it shifts all logits of a query alike)
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.flatten(1 if p.ndim > 1 else 0).any(-1).all()]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_class_conditioning_and_null_label(kind):
    if kind == "unet":
        model, x = perturb_zero_init(unet(num_classes=5)), torch.randn(2, 1, 8, 8)
    else:
        model, x = perturb_zero_init(build_model("mlp", dim=2, num_classes=5)), torch.randn(2, 2)
    t = torch.tensor([100.0, 100.0])
    a, b = model(x, t, torch.tensor([0, 1])), model(x, t, torch.tensor([1, 0]))
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([5, 5])))
    with pytest.raises(ValueError, match="unconditional"):
        (unet() if kind == "unet" else build_model("mlp"))(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_time_999_and_1000_differ_under_bf16_autocast(kind):
    model = perturb_zero_init(unet() if kind == "unet" else build_model("mlp", dim=2))
    seen = []
    model.time_embed[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.randn(1, 1, 8, 8) if kind == "unet" else torch.randn(1, 2)
    x = torch.cat([x, x])  # one sample at two times
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([999.0, 1000.0]))
    assert seen[0].dtype == torch.float32  # the sinusoids stay float32
    assert not torch.equal(seen[0][0], seen[0][1])
    assert not torch.equal(out[0], out[1])


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


def test_mlp_flattens_and_restores_shape():
    mlp = build_model("mlp", dim=16, out_mult=2)
    assert mlp(torch.randn(3, 1, 4, 4), torch.rand(3)).shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="dim=16"):
        mlp(torch.randn(3, 15), torch.rand(3))


def test_named_sizes_and_their_parameter_counts():
    counts = {name: sum(p.numel() for p in build_model("unet", size=name, in_channels=1).parameters())
              for name in UNET_SIZES}
    # as written in the comments of UNET_SIZES; "tiny" equals diffusers' UNet2DModel(
    # block_out_channels=(32, 64, 64), layers_per_block=2) at 1 channel: 1,623,169
    assert counts == {"tiny": 1_623_169, "small": 9_922_753, "base": 35_741_697}
    cfg = model_config("unet", size="tiny", in_channels=3, num_classes=10)
    assert cfg.channels == 32 and cfg.num_classes == 10
    assert model_config("unet", dataclasses.asdict(cfg)) == cfg  # round trip through a dict


def test_config_from_json_style_dict():
    cfg = model_config("unet", {"channel_mult": [1, 2], "attention_resolutions": [2], "dropout": 0})
    assert cfg.channel_mult == (1, 2) and cfg.attention_resolutions == (2,) and cfg.dropout == 0.0


@pytest.mark.parametrize("kind, config, error, match", [
    ("transformer", {}, ValueError, r"unknown model kind 'transformer'; valid: \['classifier', 'dit', 'flow', 'kl_autoencoder', 'mlp', 'unet', 'uvit', 'vq_autoencoder'\]"),
    ("unet", {"chanels": 64}, ValueError, r"unknown UNetConfig keys \['chanels'\]; valid: .*'channels'"),
    ("mlp", {"hidden_dim": 64}, ValueError, r"unknown MLPConfig keys.*valid: .*'hidden'"),
    ("unet", {"size": "huge"}, ValueError, r"unknown unet size 'huge'; valid: \['base', 'small', 'tiny'\]"),
    ("unet", {"channels": "64"}, TypeError, r"UNetConfig.channels must be int, got '64'"),
    ("unet", {"channels": 64.0}, TypeError, r"UNetConfig.channels"),
    ("unet", {"learned_sigma": 1}, TypeError, r"UNetConfig.learned_sigma must be bool"),
    ("unet", {"channel_mult": (1, 2.5)}, TypeError, r"UNetConfig.channel_mult"),
    ("unet", {"num_classes": 10.0}, TypeError, r"UNetConfig.num_classes"),
    ("mlp", {"time_scale": "1000"}, TypeError, r"MLPConfig.time_scale must be float"),
    ("unet", {"channel_mult": (1, 2), "attention_resolutions": (16,)}, ValueError,
     r"attention_resolutions \(16,\) are downsample factors.*\(1, 2\)"),
    ("unet", {"channels": 48, "head_channels": 32}, ValueError, r"head_channels=32 does not divide"),
    ("unet", {"channel_mult": ()}, ValueError, r"channel_mult must be non-empty"),
    ("unet", {"dropout": 1.0}, ValueError, r"dropout"),
    ("mlp", {"dim": 0}, ValueError, r"MLPConfig.dim must be positive"),
])
def test_bad_configs_are_refused_with_the_key_named(kind, config, error, match):
    with pytest.raises(error, match=match):
        build_model(kind, config)


def test_configs_are_checked_when_built_directly():
    with pytest.raises(TypeError, match="UNetConfig.num_res_blocks"):
        UNetConfig(num_res_blocks="2")
    with pytest.raises(TypeError, match="MLPConfig.depth"):
        MLPConfig(depth=None)
