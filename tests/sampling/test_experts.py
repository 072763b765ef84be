"""Expert denoisers by noise level (sampling/experts.py, SDXL's base + refiner): on the demo
mixture, a base exact only at high noise handed over to a refiner exact only at low noise
samples the mixture; either alone, or the hand-over the wrong way round, does not."""

from __future__ import annotations

import pytest
import torch

import harness as H
from hirune import DiscreteVP, VPSDE, sample
from hirune.process.mixture import GaussianMixture
from hirune.sampling.experts import ExpertSwitch

PROCESS = DiscreteVP("linear")
SWITCH = 199.0      # SDXL's refiner: the 200 lowest of 1000 levels
BLURRY = GaussianMixture(H.GM.means, H.GM.stds * 1.6, H.GM.weights)   # a base poor at fine detail


class Piecewise:
    """`good` where t <= switch (low_good) or t > switch, else `bad`: an expert of one part."""

    def __init__(self, good, bad, low_good: bool):
        self.good, self.bad, self.low_good, self.process = good, bad, low_good, PROCESS

    def __call__(self, x, t, **cond):
        low = float(torch.as_tensor(t).flatten()[0]) <= SWITCH
        return (self.good if low == self.low_good else self.bad)(x, t, **cond)


def _experts():
    exact = H.GM.denoiser(PROCESS, "eps")
    base = Piecewise(exact, BLURRY.denoiser(PROCESS, "eps"), low_good=False)
    refiner = Piecewise(exact, BLURRY.denoiser(PROCESS, "eps"), low_good=True)
    return base, refiner


def _samples(denoiser):
    return sample(denoiser, (H.N, 2), "ddim", 50, seed=0, dtype=torch.float64).x


@pytest.mark.slow  # opt in with --runslow (the suite's 10-minute budget)
def test_base_then_refiner_samples_the_mixture_and_broken_hand_overs_do_not():
    base, refiner = _experts()
    ok, errors = H.matches_mixture(_samples(ExpertSwitch(base, refiner, SWITCH)))
    assert ok, errors
    for broken in (base, refiner, ExpertSwitch(refiner, base, SWITCH)):   # alone, or swapped
        ok, errors = H.matches_mixture(_samples(broken))
        assert not ok, errors


def test_a_batch_across_the_switch_is_split():
    a, b = H.GM.denoiser(PROCESS, "eps"), BLURRY.denoiser(PROCESS, "x0")
    switch = ExpertSwitch(a, b, SWITCH)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor([500.0, 199.0, 10.0, 200.0])
    p = switch(x, t)
    pa, pb = a(x, t), b(x, t)
    for row, expert in ((0, pa), (1, pb), (2, pb), (3, pa)):
        assert torch.equal(p.x0[row], expert.x0[row]) and torch.equal(p.eps[row], expert.eps[row])


def test_experts_must_share_the_process():
    with pytest.raises(ValueError, match="share the forward process"):
        ExpertSwitch(H.GM.denoiser(PROCESS), H.GM.denoiser(DiscreteVP("cosine")), SWITCH)
    with pytest.raises(ValueError, match="share the forward process"):
        ExpertSwitch(H.GM.denoiser(PROCESS), H.GM.denoiser(VPSDE()), 0.2)
    with pytest.raises(ValueError, match="switch=2000.0 is not valid"):
        ExpertSwitch(H.GM.denoiser(PROCESS), H.GM.denoiser(PROCESS), 2000.0)
