"""Thresholding of the x0 estimate (`process/thresholding.py`, Imagen sec. 2.3): static
clipping, dynamic thresholding on hand-made values, that it runs after guidance and never
per branch, and that it reaches every sampler.  Broken variants (s not floored at 1, the
percentile over the whole batch) fail the same checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import hirune as H
from hirune.families.diffusion_sampling import guide
from hirune.process.denoiser import clipped_prediction
from hirune.process.thresholding import Threshold, apply_clip, make_threshold, with_clip
from hirune.sampling import sample
from hirune.sampling.guidance import ClassifierFreeGuidance, ClassifierGuidance


class NoFloor(Threshold):  # broken: s is not floored at 1
    def scale(self, x0):
        return torch.quantile(x0.abs().reshape(len(x0), -1), self.percentile, dim=1)


class BatchWide(Threshold):  # broken: one percentile over the whole batch
    def scale(self, x0):
        return torch.quantile(x0.abs().reshape(-1), self.percentile).clamp(min=1).expand(len(x0))


def _keeps_order_of_overshoot(th) -> bool:
    """The note's example: guided values far above 1 keep their order (dynamic, p = 1:
    s = 4, x / 4)."""
    x0 = torch.tensor([[0.5, 2.0, 3.0, 4.0]])
    return torch.allclose(th(x0), torch.tensor([[0.125, 0.5, 0.75, 1.0]]))


def _leaves_in_range_samples(th) -> bool:
    """Values within [-1, 1]: s <= 1 is floored to 1 and nothing changes, whatever p."""
    x0 = torch.tensor([[0.1, -0.2, 0.5, 0.3]])
    return torch.equal(th(x0), x0)


def _per_sample(th) -> bool:
    """One overshooting sample does not rescale its in-range neighbour."""
    x0 = torch.tensor([[0.5, 2.0, 3.0, 4.0], [0.1, -0.2, 0.5, 0.3]])
    return torch.equal(th(x0)[1], x0[1]) and torch.allclose(th(x0)[0], x0[0] / 4)


def test_static_clips_every_overshoot_to_one():
    x0 = torch.tensor([[0.5, 2.0, 3.0, -4.0]])
    assert torch.equal(Threshold("static")(x0), torch.tensor([[0.5, 1.0, 1.0, -1.0]]))
    assert not _keeps_order_of_overshoot(Threshold("static"))


def test_dynamic_keeps_the_order_of_values_far_above_one():
    assert _keeps_order_of_overshoot(Threshold("dynamic", 1.0))


def test_dynamic_percentile_below_one_clips_the_tail_then_divides():
    # |x0| = 0, 1, 2, 3, 4: the 0.75 quantile (linear interpolation) is at position 3 -> s = 3
    x0 = torch.tensor([[0.0, -1.0, 2.0, 3.0, -4.0]])
    th = Threshold("dynamic", 0.75)
    assert torch.allclose(th.scale(x0), torch.tensor([3.0]))
    assert torch.allclose(th(x0), torch.tensor([[0.0, -1 / 3, 2 / 3, 1.0, -1.0]]))


def test_in_range_values_are_unchanged_when_s_is_one():
    for p in (0.5, 0.9, 0.995, 1.0):
        assert _leaves_in_range_samples(Threshold("dynamic", p))


def test_s_is_per_sample():
    assert _per_sample(Threshold("dynamic", 1.0))


def test_broken_variants_fail_the_checks():
    assert not _leaves_in_range_samples(NoFloor("dynamic", 1.0))  # divides by 0.5: pushes values outward
    assert not _per_sample(BatchWide("dynamic", 1.0))  # the in-range sample is divided by 4 too


@pytest.mark.parametrize(("kind", "p", "message"), [
    ("soft", 0.995, "threshold='soft' is not valid; valid: 'static', 'dynamic'"),
    ("dynamic", 0.0, "percentile=0.0 is not valid; valid: a number in"),
    ("dynamic", 1.5, "percentile=1.5 is not valid"),
    ("dynamic", float("nan"), "percentile=nan is not valid"),
])
def test_bad_thresholds_are_named(kind, p, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Threshold(kind, p)


def test_make_threshold_by_name():
    assert make_threshold("none") is None
    assert make_threshold("static") == Threshold("static")
    assert make_threshold("dynamic", 0.9) == Threshold("dynamic", 0.9)
    with pytest.raises(ValueError, match="threshold='clip' is not valid; valid: none, static, dynamic"):
        make_threshold("clip")


def test_the_denoiser_thresholds_x0_and_keeps_eps_consistent():
    process = H.DiscreteVP("linear")
    x = torch.randn(3, 1, 4, 4)
    D = H.Denoiser(lambda x, t: 5 * x, process, "x0", clip_x0=Threshold("dynamic"))
    p = D(x, 500)
    c = process.coefficients(500, x)
    assert torch.allclose(p.x0, Threshold("dynamic")(5 * x))
    assert torch.allclose(c.alpha * p.x0 + c.sigma * p.eps, x, atol=1e-5)
    assert p.x0.abs().max() <= 1.0 + 1e-6
    # the (low, high) range still works, and None leaves x0 alone
    assert torch.equal(apply_clip(5 * x, (-1.0, 1.0)), (5 * x).clamp(-1, 1))
    assert torch.equal(apply_clip(5 * x, None), 5 * x)


def _conditional_x0_model(x, t, y):
    """x0 prediction: a per-sample ramp, scaled up for y = 1 and down for the null y = 2."""
    ramp = torch.linspace(-1, 1, x[0].numel()).reshape(x.shape[1:])
    level = torch.where(y == 1, 0.9, torch.where(y == 2, 0.2, 0.6)).reshape(-1, *([1] * (x.ndim - 1)))
    return level * ramp + 0.01 * x


def test_thresholding_runs_after_guidance_never_per_branch():
    process, th = H.DiscreteVP("linear"), Threshold("dynamic", 0.995)
    inner = H.Denoiser(_conditional_x0_model, process, "x0", clip_x0=th)
    x, y, s = torch.randn(2, 1, 4, 4), torch.tensor([1, 0]), 8.0
    guided = ClassifierFreeGuidance(inner, s, {"y": 2})
    assert guided.clip_x0 == th and guided.inner.clip_x0 is None  # taken off the branches
    out = guided(x, 500, y=y)
    raw = ClassifierFreeGuidance(with_clip(inner, None), s, {"y": 2})(x, 500, y=y)
    assert raw.x0.abs().max() > 2  # the guided estimate overshoots
    assert torch.allclose(out.x0, th(raw.x0))  # the guided denoiser is threshold(guided x0)
    # thresholding each branch first (a per-branch order) gives another x0
    c_x0, u_x0 = inner(x, 500, y=y).x0, inner(x, 500, y=torch.full_like(y, 2)).x0
    per_branch = u_x0 + s * (c_x0 - u_x0)
    assert not torch.allclose(out.x0, per_branch, atol=1e-3)
    # classifier guidance: the same path
    cg = ClassifierGuidance(inner, lambda x, t: x.reshape(len(x), -1)[:, :3] * 10, 5.0)
    assert cg.clip_x0 == th and cg.inner.clip_x0 is None


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "euler"])
def test_dynamic_thresholding_reaches_every_sampler(sampler):
    inner = H.Denoiser(_conditional_x0_model, H.DiscreteVP("linear"), "x0", clip_x0=None)
    guided = ClassifierFreeGuidance(inner, 8.0, {"y": 2})
    y = torch.ones(2, dtype=torch.long)
    free = sample(guided, (2, 1, 4, 4), sampler, steps=6, seed=0, cond={"y": y}).x
    assert free.abs().max() > 1.5  # without thresholding the guided sample leaves [-1, 1]
    dynamic = sample(with_clip(guided, Threshold("dynamic")), (2, 1, 4, 4), sampler, steps=6, seed=0, cond={"y": y}).x
    assert dynamic.abs().max() <= 1.0 + 1e-4
    static = sample(with_clip(guided, Threshold("static")), (2, 1, 4, 4), sampler, steps=6, seed=0, cond={"y": y}).x
    # static saturates many values at the bound, dynamic keeps them apart
    assert (static.abs() > 0.999).sum() > (dynamic.abs() > 0.999).sum()


def _fake_run(first_stage=None, kind="image"):
    return SimpleNamespace(first_stage=first_stage, data=SimpleNamespace(kind=kind, name="x"))


def test_guide_refuses_thresholding_latents_and_non_images():
    with pytest.raises(ValueError, match="threshold=dynamic is not valid for a latent diffusion run"):
        guide(_fake_run(first_stage=object()), "none", threshold="dynamic")
    with pytest.raises(ValueError, match="threshold=static is not valid for toy data"):
        guide(_fake_run(kind="toy"), "none", threshold="static")
    with pytest.raises(ValueError, match="percentile=2.0 is not valid"):
        guide(_fake_run(), "none", threshold="dynamic", percentile=2.0)


def test_clipped_prediction_with_a_threshold():
    c = H.DiscreteVP("linear").coefficients(10, torch.zeros(1, 4))
    x, x0 = torch.zeros(1, 4), torch.tensor([[0.5, 2.0, 3.0, 4.0]])
    p = clipped_prediction(x, x0, torch.zeros(1, 4), c, None, Threshold("dynamic", 1.0))
    assert torch.allclose(p.x0, x0 / 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dynamic_keeps_the_dtype(dtype):
    x0 = torch.tensor([[0.5, 2.0, 3.0, 4.0]], dtype=dtype)
    out = Threshold("dynamic", 1.0)(x0)
    expected = torch.tensor([[0.125, 0.5, 0.75, 1.0]], dtype=torch.float64)
    assert out.dtype == dtype and torch.allclose(out.double(), expected)


def test_the_public_guide_passes_thresholding_to_the_run():
    """`hirune.inference.generate.guide` (the Python entry point) hands threshold and
    percentile to the run's own guide, and asks nothing of runs when there is none."""
    from hirune.inference.generate import guide as public_guide

    seen = {}

    class Run:
        name = "diffusion"

        def guide(self, method, scale, **options):
            seen.update(method=method, scale=scale, **options)
            return "denoiser"

    assert public_guide(Run(), "cfg", 3.0, threshold="dynamic", percentile=0.9) == "denoiser"
    assert seen["threshold"] == "dynamic" and seen["percentile"] == 0.9 and seen["scale"] == 3.0
    seen.clear()
    public_guide(Run(), "none")
    assert "threshold" not in seen                                   # the run keeps its own clipping
    with pytest.raises(ValueError, match="guidance and thresholding need a diffusion"):
        public_guide(SimpleNamespace(name="flow"), "none", threshold="static")
