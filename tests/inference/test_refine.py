"""SDXL's refiner (inference/refine.py): a base run handed over to a refiner run at the switch
-- the base alone above it (bitwise), the refiner below -- and the pair checked."""

from __future__ import annotations

import pytest
import torch

from hirune.inference.refine import refine, refined, switch_time
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

TINY = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 8}


def _train(out, **extra):
    values = {"steps": 2, "batch_size": 4, "sample_every": 0, "ckpt_every": 2, "log_every": 1, "eval_samples": 0,
              "model_config": TINY, "out": str(out), **extra}
    train(preset_config("vpred-digits", values), progress=False)
    return load(out)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    return _train(root / "base"), _train(root / "refiner", train_until=0.2, seed=1)


def test_the_refiner_trains_on_the_low_noise_part_only(pair):
    _, refiner = pair
    t = refiner.draw(4000, torch.Generator().manual_seed(0)).t
    assert t.max() == 199 and t.min() == 0


def test_the_hand_over_happens_at_the_switch(pair):
    base, refiner = pair
    kw = dict(steps=3, seed=4, progress=False)   # grid 999, 666, 333 (trailing)
    alone = base.generate(3, **kw)[0].x
    assert switch_time(refiner, None) == 199.0 and switch_time(refiner, 0.1) == 99.0
    high = refine(base, refiner, 3, **kw)[0].x                      # no grid time <= 199: the base alone
    assert torch.equal(high, alone)
    out, _ = base.generate(3, denoiser=refined(base, refiner), **kw)
    assert torch.equal(out.x, high)
    deep = _train(base.run_dir.parent / "deep", train_until=0.5)    # hands over at 499: the last step differs
    low = refine(base, deep, 3, **kw)[0].x
    assert not torch.equal(low, alone)
    steps_above = base.generate(3, denoiser=refined(base, deep), **kw)[0].x
    assert torch.equal(steps_above, low)


def test_bad_pairs_are_refused(pair, tmp_path):
    base, refiner = pair
    with pytest.raises(ValueError, match=r"switch=0.5 is not valid; valid: a fraction in \(0, 0.2\]"):
        refined(base, refiner, 0.5)
    other = _train(tmp_path / "cos", train_until=0.2, process_config={"schedule": "linear"})
    with pytest.raises(ValueError, match="the refiner has process_config"):
        refined(base, other)
