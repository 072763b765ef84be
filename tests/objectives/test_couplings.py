"""Flow matching's couplings: the minibatch OT pairing is the optimal permutation, reflow
trains on its teacher's own (noise, sample) pairs, and straightness measures what it
should."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import pytest
import torch

from hirune import objectives as O
from hirune.data import load_dataset
from hirune.metrics.distances import straightness
from hirune.training import Trainer, micro_batch_indices, preset_config, train


def test_ot_pairing_is_the_cheapest_permutation():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    paired = O.ot_pairing(x0, noise)
    cost = lambda z: float(((x0 - z) ** 2).sum())  # noqa: E731
    best = min(cost(noise[list(p)]) for p in itertools.permutations(range(6)))
    assert cost(paired) == pytest.approx(best, rel=1e-12)
    assert sorted(paired[:, 0].tolist()) == sorted(noise[:, 0].tolist())   # a permutation of the noise
    assert cost(paired) < cost(noise)


def test_ot_coupling_lowers_the_flow_matching_target_variance():
    """Paired by OT, the regression targets eps - x0 are much shorter than with independent
    noise (the paths cross less).  For x0 ~ N(0, 4 I), eps ~ N(0, I) in 2-D: E|x0 - eps|^2
    is 10 independently and 2 under the optimal (quantile-matching) coupling; a minibatch of
    256 gets most of the way."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(256, 2, generator=g) * 2
    noise = torch.randn(256, 2, generator=g)
    ot = float(((O.ot_pairing(x0, noise) - x0) ** 2).sum(1).mean())
    independent = float(((noise - x0) ** 2).sum(1).mean())
    assert ot < 0.5 * independent, (ot, independent)


def test_straightness_is_zero_for_a_line_and_positive_for_a_bend():
    t = [1.0, 0.75, 0.5, 0.25, 0.0]
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    line = [a + (1 - s) * (b - a) for s in t]
    assert straightness(line, t) == pytest.approx(0.0, abs=1e-12)
    bent = [line[0], line[1] + 0.3, line[2] + 0.3, line[3], line[4]]
    assert straightness(bent, t) > 0.01
    with pytest.raises(ValueError, match="one time per"):
        straightness(line, t[:-1])


def test_reflow_trains_on_the_teacher_pairs(tmp_path):
    teacher = tmp_path / "rf1"
    small = {"hidden": 32, "depth": 2}  # the teacher samples the whole training set, twice: keep it small
    train(preset_config("flow-two-moons", {"model_config": small, "steps": 20, "ckpt_every": 20, "sample_every": 0,
                                           "out": str(teacher)}), progress=False)
    cfg = preset_config("flow-two-moons", {"model_config": small, "steps": 2, "reflow_from": str(teacher),
                                           "reflow_steps": 5, "ckpt_every": 0, "sample_every": 0,
                                           "out": str(tmp_path / "rf2")})
    trainer = Trainer(cfg)
    family = trainer.family
    moons = load_dataset("two_moons", "train").data
    assert family.reflow_noise.shape == family.train_data.data.shape == moons.shape
    assert not torch.equal(family.train_data.data, moons)  # the data are the teacher's samples
    # deterministic: a run in another directory draws the same pairs from the teacher
    again = Trainer(dataclasses.replace(cfg, out=str(tmp_path / "rf2-again")))
    assert torch.equal(family.reflow_noise.cpu(), again.family.reflow_noise.cpu())
    assert torch.equal(family.train_data.data, again.family.train_data.data)
    # and the run keeps them: resumed without its teacher, it reads the same pairs
    shutil.move(teacher, tmp_path / "teacher-moved")
    resumed = Trainer(cfg)
    assert torch.equal(family.reflow_noise.cpu(), resumed.family.reflow_noise.cpu())
    assert torch.equal(family.train_data.data, resumed.family.train_data.data)
    seen = []
    real = O.flow_matching_loss

    def spy(forward, process, x0, *args, noise=None, **kw):
        seen.append((x0, noise))
        return real(forward, process, x0, *args, noise=noise, **kw)

    O.flow_matching_loss, saved = spy, O.flow_matching_loss
    try:
        data, labels = trainer.training_data()
        trainer.train_step(data, labels)
    finally:
        O.flow_matching_loss = saved
    assert len(seen) == 1 and seen[0][1] is not None and seen[0][1].shape == (cfg.batch_size, 2)
    # each example is the teacher's sample from the very noise it is paired with
    idx = micro_batch_indices(len(data), cfg.batch_size, 0, cfg.seed)
    assert torch.equal(seen[0][0], family.train_data.data[idx].to(seen[0][0].device))
    assert torch.equal(seen[0][1], family.reflow_noise[idx.to(family.reflow_noise.device)])


def test_coupling_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="coupling"):
        Trainer(preset_config("flow-two-moons", {"coupling": "sinkhorn", "out": str(tmp_path)}))
    with pytest.raises(ValueError, match="flow_matching"):
        Trainer(preset_config("ddpm-two-moons", {"coupling": "ot", "out": str(tmp_path)}))
    with pytest.raises(ValueError, match="flow-matching run"):
        ddpm = tmp_path / "ddpm"
        train(preset_config("ddpm-two-moons", {"steps": 1, "ckpt_every": 1, "sample_every": 0, "out": str(ddpm)}),
              progress=False)
        Trainer(preset_config("flow-two-moons", {"reflow_from": str(ddpm), "out": str(tmp_path / "x")}))
    trainer = train(preset_config("flow-two-moons", {"coupling": "ot", "steps": 3, "ckpt_every": 0,
                                                     "sample_every": 0, "out": str(tmp_path / "ot")}), progress=False)
    assert trainer.step == 3
