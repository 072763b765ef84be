"""Sampling a diffusion run (`families/diffusion_sampling.py`): sizes checked, large counts
drawn in chunks of bounded memory (chunk k seeded with seed + k, so a count within one
chunk gives exactly the samples it always gave), labels checked against the classes."""

from __future__ import annotations

import pytest
import torch

from hirune.families import base
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

TINY_UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    cfg = preset_config("ddpm-two-moons", {"model_config": {"hidden": 32, "depth": 2},
                                           "out": str(tmp_path_factory.mktemp("toy"))})
    return Trainer(cfg).family


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cfg = preset_config("ddpm-digits", {"class_conditional": True, "model_config": TINY_UNET,
                                        "out": str(tmp_path_factory.mktemp("digits"))})
    return Trainer(cfg).family


def test_a_large_count_is_drawn_in_chunks_seeded_seed_plus_k(toy, monkeypatch):
    monkeypatch.setattr(base, "SAMPLE_CHUNK", 4)
    seen = []
    network = toy.denoiser.model
    monkeypatch.setattr(toy.denoiser, "model", lambda x, t, **c: seen.append(len(x)) or network(x, t, **c))
    out, _ = toy.generate(10, steps=2, seed=5, progress=False)
    assert out.x.shape == (10, 2) and max(seen) == 4
    parts = [toy.generate(k, steps=2, seed=s, progress=False)[0] for k, s in ((4, 5), (4, 6), (2, 7))]
    assert torch.equal(out.x, torch.cat([p.x for p in parts]))
    assert out.nfe == parts[0].nfe  # network evaluations per sample


def test_chunks_keep_each_samples_condition(digits, monkeypatch):
    labels = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    whole, _ = digits.generate(7, steps=2, labels=labels, progress=False)
    monkeypatch.setattr(base, "SAMPLE_CHUNK", 3)
    out, back = digits.generate(7, steps=2, labels=labels, progress=False)
    assert torch.equal(back, labels)
    first = digits.generate(3, steps=2, labels=labels[:3], progress=False)[0]
    assert torch.equal(out.x[:3], first.x) and torch.equal(out.x[:3], whole.x[:3])
    third = digits.generate(1, steps=2, seed=2, labels=labels[6:], progress=False)[0]
    assert torch.equal(out.x[6:], third.x)


def test_a_trajectory_is_for_one_chunk(toy, monkeypatch):
    monkeypatch.setattr(base, "SAMPLE_CHUNK", 4)
    assert len(toy.generate(4, steps=2, trajectory=True, progress=False)[0].trajectory) == 3
    with pytest.raises(ValueError, match="trajectory .* at most 4 samples"):
        toy.generate(5, steps=2, trajectory=True, progress=False)


@pytest.mark.parametrize("n", [0, -5])
def test_non_positive_counts_are_refused(toy, n):
    with pytest.raises(ValueError, match=f"n={n} is not valid; valid: an integer >= 1"):
        toy.generate(n, steps=2, progress=False)


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_are_not_silently_the_default(toy, steps):
    """`--steps 0` sampled with the run's 50 steps (steps or sample_steps)."""
    with pytest.raises(ValueError, match=f"steps={steps} is not valid; valid: an integer >= 1"):
        toy.generate(4, steps=steps, progress=False)


def test_a_count_beyond_memory_is_refused_before_sampling(toy):
    with pytest.raises(ValueError, match=r"n=1000000000000: 1000000000000 samples of 2 values .* more than this "
                                         r"machine's memory"):
        toy.generate(10**12, steps=2, progress=False)


def test_labels_out_of_range_are_named(digits):
    """A label beyond the classes reached the embedding (IndexError)."""
    with pytest.raises(ValueError, match=r"class 42 is out of range; valid: 0..9"):
        digits.generate(2, steps=2, labels=torch.tensor([1, 42]), progress=False)
    with pytest.raises(ValueError, match=r"class -1 is out of range; valid: 0..9"):
        digits.condition(torch.tensor([-1]))


def test_evaluate_refuses_bad_counts(toy):
    with pytest.raises(ValueError, match="n=0 is not valid"):
        toy.evaluate(0, steps=2)
    with pytest.raises(ValueError, match="nll=-5 is not valid; valid: an integer >= 0"):
        toy.evaluate(10, steps=2, nll=-5)
    with pytest.raises(ValueError, match="nll=10001: the two_moons test split has 10000 examples"):
        toy.nll(10001)


def test_guide_threshold_replaces_the_runs_clipping_after_guidance(digits):
    from hirune.process.thresholding import Threshold

    assert digits.denoiser.clip_x0 == (-1.0, 1.0)  # the run's own: static for pixel images
    assert digits.guide("none") is digits.denoiser  # threshold None keeps it
    plain = digits.guide("none", threshold="dynamic", percentile=0.9)
    assert plain.clip_x0 == Threshold("dynamic", 0.9) and digits.denoiser.clip_x0 == (-1.0, 1.0)
    assert digits.guide("none", threshold="none").clip_x0 is None
    cfg = digits.guide("cfg", 5.0, threshold="dynamic")
    assert cfg.clip_x0 == Threshold("dynamic") and cfg.inner.clip_x0 is None  # after guidance, not per branch
    assert digits.guide("cfg", 5.0).clip_x0 == (-1.0, 1.0)
    out, _ = digits.generate(2, "ddim", 3, denoiser=cfg, label=3, progress=False)
    assert out.x.abs().max() <= 1.0


def test_guide_refuses_thresholding_non_images(toy):
    with pytest.raises(ValueError, match="threshold=dynamic is not valid for toy data"):
        toy.guide("none", threshold="dynamic")
