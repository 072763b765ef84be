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
