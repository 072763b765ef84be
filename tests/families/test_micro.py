"""SDXL's micro-conditioning and noise offset (families/micro.py): the augmentations in
closed form, the sizes and crops reaching the network (a network that ignores them is
caught), the family feeding each image its own conditions, and the offset noise's law."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hirune.families import micro
from hirune.families.base import Batch
from hirune.models.dit import DiT, DiTConfig
from hirune.models.unet import UNet, UNetConfig
from hirune.sampling.guidance import KEEP
from hirune.training.config import check_config
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

TINY = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 8}


def _cfg(out, **extra):
    values = {"steps": 1, "batch_size": 4, "sample_every": 0, "ckpt_every": 1, "log_every": 1, "eval_samples": 0,
              "model_config": TINY, "out": str(out), "micro_conditioning": True, "micro_min_size": 3,
              "micro_crop": 2, **extra}
    return preset_config("vpred-digits", values)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "run"
    train(_cfg(out, noise_offset=0.1), progress=False)
    return load(out)


# --- the augmentations -------------------------------------------------------------------
def test_degrade_is_area_down_then_bilinear_up_and_full_size_is_exact():
    x = torch.randn(3, 1, 28, 28)
    out = micro.degrade(x, torch.tensor([28, 14, 7]))
    assert torch.equal(out[0], x[0])
    for row, h in ((1, 14), (2, 7)):   # area = the mean over (28 / h)^2 blocks
        want = F.interpolate(F.avg_pool2d(x[row: row + 1], 28 // h), size=(28, 28), mode="bilinear",
                             align_corners=False)
        assert torch.allclose(out[row: row + 1], want, atol=1e-6)
    checker = (torch.arange(28)[:, None] + torch.arange(28)).remainder(2).float()[None, None] * 2 - 1
    assert micro.degrade(checker, torch.tensor([14])).abs().max() < 1e-6   # period 2: gone at 14 pixels


def test_shift_moves_the_content_by_minus_the_offsets_and_pads_with_the_edge():
    x = -torch.ones(2, 1, 12, 12)
    x[:, :, 5, 6] = 1.0
    out = micro.shift(x, torch.tensor([[2, -3], [0, 0]]), margin=3)
    assert out[0, 0, 3, 9] == 1.0 and out[0].sum() == x[0].sum()   # (5, 6) -> (5 - 2, 6 + 3)
    assert torch.equal(out[1], x[1])
    ramp = torch.arange(12.0).expand(1, 1, 12, 12)                  # edges repeated: the background
    assert torch.equal(micro.shift(ramp, torch.tensor([[0, -2]]), 2)[0, 0, 0, :3], torch.tensor([0.0, 0.0, 0.0]))


def test_the_measures_match_closed_forms():
    x = -torch.ones(1, 1, 10, 10)
    x[0, 0, 2, 7] = 1.0
    assert torch.allclose(micro.center_of_mass(x), torch.tensor([[2.0, 7.0]]))
    assert micro.high_frequency_energy(torch.full((1, 1, 8, 8), 0.3)) == 0
    spike = torch.zeros(1, 1, 8, 8)
    spike[0, 0, 4, 4] = 2.0   # Laplacian: -8 at the spike, 2 at its four neighbours
    assert torch.isclose(micro.high_frequency_energy(spike), torch.tensor([(64 + 4 * 4) / 64]))


def test_micro_vector_is_sdxl_add_time_ids():
    v = micro.micro_vector(torch.tensor([7, 28]), torch.tensor([[1, -2], [0, 0]]), (28, 28))
    assert torch.equal(v, torch.tensor([[7.0, 7, 1, -2, 28, 28], [28, 28, 0, 0, 28, 28]]))
    assert micro.micro_vector(torch.tensor([14]), torch.zeros(1, 2, dtype=torch.long), (28, 56))[0, 1] == 28


# --- the networks read them ------------------------------------------------------------------
def _unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=1, micro_conditions=6, **{**TINY, "channel_mult": (1, 2),
                                                                  "attention_resolutions": (2,)}))


def _dit():
    torch.manual_seed(0)
    return DiT(DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
                         micro_conditions=6))


def _wake(net):
    """Zero-initialised layers hide every input: give them weights."""
    for name, p in net.named_parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    return net


def _reads_micro(net, size: int) -> bool:
    x, t = torch.randn(2, 1, size, size), torch.tensor([10.0, 500.0])
    small, full = torch.tensor([[4.0, 4, 0, 0, size, size]]), torch.tensor([[size, size, 0, 0, size, size]])
    crop = torch.tensor([[size, size, 2, -2, size, size]])
    with torch.no_grad():
        a, b, c = (net(x, t, micro=m.expand(2, -1)) for m in (small, full, crop))
    return bool((a - b).abs().max() > 1e-4 and (c - b).abs().max() > 1e-4)


@pytest.mark.parametrize("make, size", [(_unet, 8), (_dit, 8)])
def test_sizes_and_crops_reach_the_network_and_a_blind_one_is_caught(make, size):
    net = make()
    x, t = torch.randn(2, 1, size, size), torch.ones(2)
    with torch.no_grad():   # the embedding's last layer starts at zero: a fresh net ignores them
        assert torch.equal(net(x, t, micro=torch.zeros(2, 6)), net(x, t, micro=torch.full((2, 6), 5.0)))
    net = _wake(net)
    assert _reads_micro(net, size)
    blind = _wake(make())
    blind.micro_embed.forward = lambda m: torch.zeros(len(m), blind.micro_embed.mlp[-1].out_features)
    assert not _reads_micro(blind, size)


def test_the_networks_need_micro_and_refuse_it_unbuilt():
    net, plain = _unet(), UNet(UNetConfig(in_channels=1, **{**TINY, "channel_mult": (1, 2),
                                                             "attention_resolutions": (2,)}))
    x, t = torch.randn(2, 1, 8, 8), torch.ones(2)
    with pytest.raises(ValueError, match="micro"):
        net(x, t)
    with pytest.raises(ValueError, match="micro"):
        plain(x, t, micro=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"valid: \(B, 6\)"):
        net(x, t, micro=torch.zeros(2, 4))


# --- the family --------------------------------------------------------------------------------
class Spy(torch.nn.Module):
    def forward(self, x, t, **cond):
        self.x, self.t, self.cond = x, t, cond
        return torch.zeros_like(x)


def test_draw_ranges_and_the_global_batch(run):
    d = run.draw(200, torch.Generator().manual_seed(1))
    assert d.original_height.min() == 3 and d.original_height.max() == 8
    assert d.crop.min() == -2 and d.crop.max() == 2 and d.offset_noise.shape == (200, 1, 1, 1)
    assert torch.equal(d.slice(slice(100, 200)).crop, d.crop[100:])


def _noisy_input(run, x0, draw):
    """The x_t the network saw, rebuilt from the augmented x0 and the offset noise."""
    c = run.process.coefficients(draw.t, x0)
    aug = micro.shift(micro.degrade(x0, draw.original_height), draw.crop, run.config.micro_crop)
    noise = draw.noise + run.config.noise_offset * draw.offset_noise
    return c.alpha * aug + c.sigma * noise


def test_the_loss_feeds_each_image_its_own_conditions_and_the_offset_noise(run):
    x0 = torch.randn(4, 1, 8, 8)
    draw = run.draw(4, torch.Generator().manual_seed(3))
    draw.crop = torch.tensor([[2, 2], [-2, -2], [1, 0], [0, 1]])
    draw.original_height = torch.tensor([3, 8, 5, 8])
    spy = Spy()
    run.loss(spy, Batch(x0, None, torch.arange(4)), draw, 0)
    m = spy.cond["micro"]
    assert torch.equal(m[:, 0], draw.original_height.float()) and torch.equal(m[:, 2:4], draw.crop.float())
    assert torch.equal(m[:, 4:], torch.full((4, 2), 8.0))
    assert torch.allclose(spy.x, _noisy_input(run, x0, draw), atol=1e-5)
    for field in ("crop", "original_height"):   # another example's crop or size: caught
        shuffled = draw.slice(slice(0, 4))
        setattr(shuffled, field, getattr(draw, field).roll(1, 0))
        assert not torch.allclose(spy.x, _noisy_input(run, x0, shuffled), atol=1e-5)


def test_untold_augmentation_is_the_ablation(tmp_path):
    cfg = _cfg(tmp_path / "u", micro_conditioning=False)
    train(cfg, progress=False)
    plain = load(tmp_path / "u")
    assert plain.model.config.micro_conditions == 0
    draw = plain.draw(4, torch.Generator().manual_seed(0))
    spy = Spy()
    plain.loss(spy, Batch(torch.randn(4, 1, 8, 8), None, torch.arange(4)), draw, 0)
    assert "micro" not in (spy.cond or {}) and draw.original_height is not None


def test_offset_noise_has_the_law_of_eps_plus_a_shared_offset():
    """The per-image mean of eps + o eps_c has std sqrt(1 / HW + o^2); without the offset,
    1 / sqrt(HW) (why samples keep the start noise's mean brightness)."""
    n, o, g = 4000, 0.3, torch.Generator().manual_seed(0)
    eps, eps_c = torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 1, 1, 1, generator=g)

    class R:
        class config:
            noise_offset = o
    std = micro.offset_noise(R, eps, eps_c).mean((1, 2, 3)).std()
    want = (1 / 64 + o**2) ** 0.5   # sampling error of a std over n: about want / sqrt(2n) = 1.1%
    assert abs(std / want - 1) < 0.05
    assert abs(eps.mean((1, 2, 3)).std() / (1 / 8) - 1) < 0.05


def test_sampling_conditions_defaults_and_guidance(run):
    cond = micro.sampling_condition(run, 3, None, None)
    assert torch.equal(cond["micro"], torch.tensor([[8.0, 8, 0, 0, 8, 8]]).expand(3, -1))
    assert torch.equal(micro.sampling_condition(run, 1, 4, (1, -1))["micro"], torch.tensor([[4.0, 4, 1, -1, 8, 8]]))
    out, _ = run.generate(2, steps=2, original_size=(4, 4), crop=(0, 1), progress=False)
    assert out.x.shape == (2, 1, 8, 8)
    assert micro.null_condition(run) == {"micro": KEEP}


def test_bad_settings_are_refused(tmp_path):
    for extra, match in (({"micro_min_size": 9}, "micro_min_size=9 is not valid"),
                         ({"micro_crop": 8}, "micro_crop=8 is not valid"),
                         ({"model": "mlp", "model_config": {}}, "model='mlp' is not valid with micro"),
                         ({"noise_offset": -0.1}, "noise_offset"),
                         ({"train_until": 0.0}, "train_until"),
                         ({"train_until": 0.5, "weighting": "likelihood"}, "train_until=0.5 is not valid")):
        with pytest.raises(ValueError, match=match):
            check_config(_cfg(tmp_path / "x", **extra))
    plain = load_plain(tmp_path)
    with pytest.raises(ValueError, match="micro-conditioned run"):
        plain.generate(1, steps=1, original_size=4, progress=False)


def load_plain(tmp_path):
    train(_cfg(tmp_path / "p", micro_conditioning=False, micro_min_size=0, micro_crop=0), progress=False)
    return load(tmp_path / "p")


def test_inversion_and_likelihood_see_the_default_conditions(run):
    """Code that asks the run for its condition (editing, NLL) gets full size, uncropped."""
    from hirune.inference.editing import invert

    cond = run.condition()
    assert torch.equal(cond["micro"], torch.tensor([[8.0, 8, 0, 0, 8, 8]]))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert invert(run, x, steps=2).x.shape == x.shape


def test_with_aspect_buckets_the_target_size_is_the_bucket(tmp_path):
    """micro_conditioning on a bucketed run tells each batch its bucket (H, W) as the original
    and target size; sampling at a bucket tells that bucket."""
    from hirune.families import buckets
    from hirune.training.trainer import Trainer

    values = {"steps": 1, "batch_size": 8, "sample_every": 1, "num_samples": 3, "sample_steps": 2, "ckpt_every": 1,
              "eval_samples": 0, "model_config": TINY, "micro_conditioning": True}
    trainer = Trainer(preset_config("aspect-mnist5k", {**values, "out": str(tmp_path / "t")}), distributed=False)
    family, g, sizes = trainer.family, torch.Generator().manual_seed(3), set()
    for _ in range(6):
        d = family.draw(8, g)
        spy = Spy()
        family.loss(spy, None, d, 0)
        h, w = buckets.batch_shape(family, d)
        sizes.add((h, w))
        assert spy.x.shape[-2:] == (h, w)
        assert torch.equal(spy.cond["micro"], torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).expand(8, -1))
    assert len(sizes) > 1
    train(preset_config("aspect-mnist5k", {**values, "out": str(tmp_path / "b")}), progress=False)   # with previews
    run = load(tmp_path / "b")
    cond = micro.sampling_condition(run, 2, None, None, (32, 24))
    assert torch.equal(cond["micro"][0], torch.tensor([32.0, 24, 0, 0, 32, 24]))
    assert run.generate(2, steps=2, size=(24, 32), progress=False)[0].x.shape == (2, 1, 24, 32)
    with pytest.raises(ValueError, match="micro_min_size and micro_crop are not valid with buckets"):
        check_config(preset_config("aspect-mnist5k", {"micro_min_size": 8, "out": str(tmp_path / "c")}))
