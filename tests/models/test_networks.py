"""What every network of the denoiser protocol promises, for each kind at once: exact zero
output at initialisation, dependence on t and y with None as the null label, a gradient to
every parameter, `time_scale`, t = 999 and 1000 apart under bf16 autocast (the UNet's and
the MLP's time embedding: tests/nn/test_embeddings.py), named sizes, and
bad configs refused with the key named.  Each kind's own tests are in test_<kind>.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from hirune.models import DIT_SIZES, UVIT_SIZES, build_model, model_config
from hirune.nn import patchify
from networks import perturb_zero_init, small, unet


# ---------------------------------------------------------------- UNet and MLP

def test_zero_init_gives_exactly_zero_output():
    model = unet(num_classes=4, learned_sigma=True)
    out = model(torch.randn(3, 1, 28, 28), torch.tensor([0.0, 10.0, 999.0]), torch.tensor([0, 3, 4]))
    assert torch.equal(out, torch.zeros_like(out))
    mlp = build_model("mlp", dim=2, num_classes=3, out_mult=2)
    out = mlp(torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 4) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_gradients_reach_every_parameter_of_unet_and_mlp(kind):
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
def test_gradients_reach_every_parameter_of_transformers(kind):
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
def test_time_999_and_1000_differ_under_bf16_autocast_in_transformers(kind):
    model = perturb_zero_init(small(kind))
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([999.0, 1000.0]))
    assert not torch.equal(out[0], out[1])


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
def test_bad_transformer_configs_are_refused(kind, config, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_model(kind, config)


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_images_of_another_size_are_refused(kind):
    with pytest.raises(ValueError, match=r"built for 8 x 8 images, got \(16, 16\)"):
        small(kind)(torch.randn(1, 1, 16, 16), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"image size 7 is not divisible by patch size 2"):
        patchify(torch.randn(1, 1, 7, 8), 2)
