"""DDIM inversion: exact (fixed-point) inversion reconstructs, plain inversion drifts with a
drift that shrinks with the step count, and flows invert by running their ODE backwards."""

from __future__ import annotations

import pytest
import torch

import hirune as H
import hirune.sampling as S
from hirune.sampling.timesteps import time_grid

from harness import GM

F64 = torch.float64
X = GM.sample(256, torch.Generator().manual_seed(3))

CASES = {
    "ddpm-linear-eps": (lambda: H.DiscreteVP("linear"), "eps"),
    "ddpm-cosine-eps": (lambda: H.DiscreteVP("cosine"), "eps"),
    "vp-score": (lambda: H.VPSDE(), "score"),
    "ve-x0": (lambda: H.VESDE(0.01, 20), "x0"),
    "rectified-flow-velocity": (lambda: H.RectifiedFlow(), "velocity"),
    "condot-v": (lambda: H.CondOT(1e-3), "v"),
}


def relative_error(a, b):
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).mean())


def reconstruct(process, prediction, steps, exact):
    D = GM.denoiser(process, prediction)
    ts = time_grid(process, steps)
    inv = S.ddim_invert(D, X, ts, exact=exact)
    return S.ddim(D, inv.x, ts).x, inv


@pytest.mark.parametrize("case", list(CASES))
def test_exact_inversion_reconstructs(case):
    make, prediction = CASES[case]
    rec, inv = reconstruct(make(), prediction, 50, exact=True)
    assert relative_error(rec, X) < 1e-4  # measured ~1e-13
    assert inv.nfe > 50  # it iterated


@pytest.mark.parametrize("case", ["ddpm-linear-eps", "vp-score", "rectified-flow-velocity"])
def test_plain_inversion_drifts_less_with_more_steps(case):
    make, prediction = CASES[case]
    errors = [relative_error(reconstruct(make(), prediction, n, exact=False)[0], X)
              for n in (10, 25, 50, 100, 200)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 5  # 20x the steps: several times smaller (first order)
    # the drift the papers report for plain DDIM inversion: about 1-2% at 100 steps here
    assert 0.003 < errors[3] < 0.05, errors


@pytest.mark.filterwarnings("ignore:exact DDIM inversion did not converge")
def test_inverted_noise_looks_like_noise():
    process = H.DiscreteVP("linear")
    inv = S.ddim_invert(GM.denoiser(process, "eps"), GM.sample(4000, torch.Generator().manual_seed(1)),
                        time_grid(process, 50), exact=True)
    z = inv.x
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


@pytest.mark.parametrize("sampler", ["heun", "rk45"])
def test_flows_invert_by_running_their_ode_backwards(sampler):
    """The ODE samplers accept an increasing grid: data -> noise; then noise -> data."""
    process = H.RectifiedFlow()
    D = GM.denoiser(process, "velocity")
    fn = H.SAMPLERS[sampler]
    ts = time_grid(process, 200 if sampler == "heun" else 2)
    opts = {"rtol": 1e-9, "atol": 1e-9} if sampler == "rk45" else {}
    noise = fn(D, X, ts.flip(0), **opts).x
    back = fn(D, noise, ts, **opts).x
    assert relative_error(back, X) < (1e-5 if sampler == "rk45" else 1e-3)
    assert relative_error(noise, X) > 0.5  # it did go somewhere


def test_broken_inversion_is_caught():
    """Harness check: an 'exact' inversion that evaluates at the wrong time (the lower
    instead of the upper end of each step) does not reconstruct."""
    process = H.DiscreteVP("linear")
    D = GM.denoiser(process, "eps")
    ts = time_grid(process, 50)

    class Shifted:
        def __init__(self, inner):
            self.inner, self.process = inner, inner.process

        def __call__(self, x, t, **cond):
            return self.inner(x, max(float(t) - 20.0, 0.0), **cond)

    inv = S.ddim_invert(Shifted(D), X, ts, exact=True)
    assert relative_error(S.ddim(D, inv.x, ts).x, X) > 1e-2


def test_unconverged_exact_inversion_warns():
    """At 5 steps the fixed point is out of reach for some points: say so, never silently."""
    process = H.VPSDE()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        S.ddim_invert(GM.denoiser(process, "eps"), X, time_grid(process, 5), exact=True, max_iter=20)


def test_inversion_rejects_bad_grids():
    process = H.DiscreteVP("linear")
    D = GM.denoiser(process, "eps")
    with pytest.raises(ValueError, match="decreasing"):
        S.ddim_invert(D, X, time_grid(process, 10).flip(0))
    with pytest.raises(ValueError, match="non-finite"):
        S.ddim_invert(D, X * float("nan"), time_grid(process, 10))
