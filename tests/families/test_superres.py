"""Super-resolution diffusion (families/superres.py): the low-resolution input, noise
conditioning augmentation in closed form, the network's conditioning path, the family's loss
feeding each image its own low-res version, and classifier-free guidance keeping it."""

from __future__ import annotations

import pytest
import torch

from hirune.families import superres
from hirune.families.base import Batch
from hirune.models.unet import UNet, UNetConfig
from hirune.process import make_process
from hirune.sampling.guidance import KEEP
from hirune.training.config import check_config
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

TINY = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 8}


def _cfg(out, **extra):
    values = {"steps": 1, "batch_size": 4, "sample_every": 0, "ckpt_every": 1, "log_every": 1,
              "text_encoder": "", "model_config": TINY, "out": str(out), **extra}
    return preset_config("imagen-sr-mnist5k", values)


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    """An SR run (unconditional, so no text encoder is loaded) trained one step."""
    out = tmp_path_factory.mktemp("sr") / "run"
    train(_cfg(out), progress=False)
    return load(out)


# --- the low-resolution image -------------------------------------------------------
def test_nearest_upsampling_gives_the_low_res_image_back():
    x_low = torch.randn(3, 1, 14, 14)
    up = superres.upsample(x_low, 28)
    assert up.shape == (3, 1, 28, 28)
    assert torch.equal(superres.downsample(up, 14), x_low)
    assert torch.equal(up[:, :, 4:6, 8:10], x_low[:, :, 2:3, 4:5].expand(3, 1, 2, 2))


# --- noise conditioning augmentation --------------------------------------------------
def _matches_closed_form(augment) -> bool:
    """augment(process, x_low, a, eps) against alpha(t(a)) x + sigma(t(a)) eps computed by hand
    from the cosine DDPM schedule's alphas_cumprod at levels drawn uniformly."""
    process = make_process("ddpm", schedule="cosine")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, generator=g) * 0.5
    a[0] = 0.0
    x, eps = torch.randn(6, 1, 14, 14, generator=g), torch.randn(6, 1, 14, 14, generator=g)
    t = a.double() * (process.T - 1)    # t_min = 0, t_max = T - 1
    alpha, sigma = process.alpha(t).float(), process.sigma(t).float()
    alpha[0], sigma[0] = 1.0, 0.0       # a = 0: the clean low-res image
    want = alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps
    got = augment(process, x, a, eps)
    return torch.allclose(got, want, atol=1e-6) and torch.equal(got[0], x[0])


def test_augmentation_is_the_forward_process_at_the_drawn_level():
    assert _matches_closed_form(superres.augment)


def test_a_broken_augmentation_fails_the_closed_form_check():
    def variance_as_scale(process, x, a, eps):        # sigma^2 where sigma belongs
        alpha, sigma = superres.level_coefficients(process, a)
        return alpha.view(-1, 1, 1, 1) * x + (sigma**2).view(-1, 1, 1, 1) * eps

    def always_noised(process, x, a, eps):             # t(0) of a discrete DDPM is not clean
        t = a.double() * process.t_max
        return process.alpha(t).float().view(-1, 1, 1, 1) * x + process.sigma(t).float().view(-1, 1, 1, 1) * eps

    assert not _matches_closed_form(variance_as_scale)
    assert not _matches_closed_form(always_noised)


def test_draw_levels_lie_in_the_range_and_the_whole_batch_is_drawn(sr_run):
    d = sr_run.draw(64, torch.Generator().manual_seed(1))
    assert d.aug_level.shape == (64,) and d.aug_noise.shape == (64, 1, 14, 14)
    assert 0 <= d.aug_level.min() and d.aug_level.max() <= 0.5 and d.aug_level.max() > 0.3
    half = d.slice(slice(32, 64))                       # a rank's rows of the global draw
    assert torch.equal(half.aug_noise, d.aug_noise[32:])


# --- the network's conditioning path ----------------------------------------------------
def _unet(**extra) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, cond_channels=1, **{**TINY, "channel_mult": (1, 2),
                                                             "attention_resolutions": (2,)}, **extra))
    for name, p in net.named_parameters():   # zero-initialised convs would hide every input
        if name.endswith("weight") and not p.any() and not name.startswith("aug_embed"):
            torch.nn.init.normal_(p, std=0.1)
    return net


def _reads_low_res(net) -> bool:
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        a = net(x, t, low_res=torch.zeros(2, 1, 28, 28))
        b = net(x, t, low_res=torch.ones(2, 1, 28, 28))
    return (a - b).abs().max() > 1e-4


def test_the_unet_reads_the_low_res_image_and_a_blind_one_is_caught():
    net = _unet()
    assert _reads_low_res(net)

    class Blind(UNet):
        def _with_low_res(self, x, low_res):
            return super()._with_low_res(x, torch.zeros_like(low_res))

    blind = Blind(net.config)
    blind.load_state_dict(net.state_dict())
    assert not _reads_low_res(blind)


def test_the_unet_needs_its_inputs_and_refuses_others():
    net, plain = _unet(aug_level=True), UNet(UNetConfig(in_channels=1, **{**TINY, "channel_mult": (1, 2),
                                                                         "attention_resolutions": (2,)}))
    x, t, low = torch.randn(2, 1, 28, 28), torch.ones(2), torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="low_res"):
        net(x, t, aug_level=torch.zeros(2))
    with pytest.raises(ValueError, match="aug_level"):
        net(x, t, low_res=low)
    with pytest.raises(ValueError, match="low_res"):
        plain(x, t, low_res=low)
    with pytest.raises(ValueError, match="aug_level"):
        plain(x, t, aug_level=torch.zeros(2))
    with pytest.raises(ValueError, match="does not fit"):
        net(x, t, low_res=torch.randn(2, 1, 14, 14), aug_level=torch.zeros(2))


def test_the_level_embedding_starts_at_zero_then_matters():
    net = _unet(aug_level=True)
    x, t, low = torch.randn(2, 1, 28, 28), torch.ones(2), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        same = net(x, t, low_res=low, aug_level=torch.zeros(2)), net(x, t, low_res=low, aug_level=torch.ones(2))
        assert torch.equal(*same)           # zero-initialised last layer: a fresh net ignores a
        torch.nn.init.normal_(net.aug_embed[-1].weight, std=0.1)
        assert not torch.allclose(net(x, t, low_res=low, aug_level=torch.zeros(2)),
                                  net(x, t, low_res=low, aug_level=torch.ones(2)))


# --- the family's loss -------------------------------------------------------------------
class Spy(torch.nn.Module):
    """A network that records its keywords and predicts zeros."""

    def forward(self, x, t, **cond):
        self.x, self.cond = x, cond
        return torch.zeros_like(x)


def _feeds_own_low_res(run, loss_fn) -> bool:
    """With a = 0 the network's low-res input, pooled, is the target image's pooled version."""
    x0 = torch.randn(4, 1, 28, 28)
    draw = run.draw(4, torch.Generator().manual_seed(0))
    draw.aug_level = torch.zeros(4)
    spy = Spy()
    loss_fn(spy, Batch(x0, None, torch.arange(4)), draw, 0)
    low = spy.cond["low_res"]
    return (low.shape == x0.shape and torch.allclose(superres.downsample(low, 14), superres.downsample(x0, 14))
            and torch.equal(spy.cond["aug_level"], draw.aug_level))


def test_the_loss_feeds_each_image_its_own_low_res_version(sr_run):
    assert _feeds_own_low_res(sr_run, sr_run.loss)

    def shuffled(forward, batch, draw, step):           # another example's low-res image
        return sr_run.loss(forward, Batch(batch.x.roll(1, 0), batch.y, batch.idx), draw, step)
    assert not _feeds_own_low_res(sr_run, shuffled)


def test_the_loss_feeds_the_augmented_image_at_the_drawn_level(sr_run):
    x0 = torch.randn(4, 1, 28, 28)
    draw = sr_run.draw(4, torch.Generator().manual_seed(3))
    spy = Spy()
    sr_run.loss(spy, Batch(x0, None, torch.arange(4)), draw, 0)
    want = superres.upsample(superres.augment(sr_run.process, superres.downsample(x0, 14), draw.aug_level,
                                              draw.aug_noise), 28)
    assert torch.allclose(spy.cond["low_res"], want, atol=1e-6)


# --- guidance and sampling ------------------------------------------------------------------
def test_cfg_keeps_the_low_res_input_in_both_branches(tmp_path):
    train(_cfg(tmp_path / "t", text_encoder="tiny"), progress=False)
    run = load(tmp_path / "t")
    guided = run.guide("cfg", 3.0)
    assert guided.null_cond["low_res"] is KEEP and guided.null_cond["aug_level"] is KEEP
    spy = Spy()
    guided.inner.model = spy
    cond = {**run.condition(prompts=["a seven", "a two"]),
            **superres.sampling_condition(run, torch.randn(2, 1, 14, 14), 0.2, 0)}
    guided(torch.randn(2, 1, 28, 28), torch.tensor([5.0, 5.0]), **cond)
    low = spy.cond["low_res"]
    assert low.shape[0] == 4 and torch.equal(low[:2], low[2:]) and torch.equal(low[:2], cond["low_res"])
    assert not torch.equal(spy.cond["context"][:2], spy.cond["context"][2:])   # the text is guided


def test_sampling_needs_fitting_low_res_images(sr_run):
    with pytest.raises(ValueError, match=r"valid: \(N, 1, 14, 14\)"):
        sr_run.generate(2, steps=2, low_res=torch.zeros(2, 1, 7, 7), progress=False)
    out, _ = sr_run.generate(2, steps=2, low_res=torch.zeros(2, 1, 14, 14), aug_level=0.3, progress=False)
    assert out.x.shape == (2, 1, 28, 28)


# --- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    ({"low_res": 9}, r"low_res=9 is not valid for 28 x 28 images; valid: \[1, 2, 4, 7, 14\]"),
    ({"low_res": 28}, "low_res=28 is not valid"),
    ({"low_res": 0, "noise_aug": 0.3}, "noise_aug=0.3 is not valid without low_res"),
    ({"model": "dit", "model_config": {}}, "model='dit' is not valid with low_res"),
    ({"autoencoder": "runs/kl-ae-mnist5k"}, "not valid with autoencoder="),
    ({"dataset": "two_moons"}, "valid: square images"),
    ({"noise_aug": 1.5}, "noise_aug"),
])
def test_bad_settings_are_named(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        check_config(_cfg(tmp_path / "x", **extra))
