"""Prediction targets: exact round trips, and agreement with each paper's definition."""

from __future__ import annotations

import itertools

import pytest
import torch

import hirune as H
from hirune.process.parameterization import PREDICTIONS, from_x0_eps, to_x0_eps

F64 = torch.float64
PROCESSES = {
    "ddpm": H.DiscreteVP("linear"),
    "ddpm-ztsnr": H.DiscreteVP("scaled_linear", zero_terminal_snr=True),
    "vp": H.VPSDE(),
    "subvp": H.SubVPSDE(),
    "ve": H.VESDE(0.01, 50),
    "rf": H.RectifiedFlow(),
    "condot": H.CondOT(1e-2),
}


def interior_times(process):
    return torch.linspace(process.t_min, process.t_max, 7, dtype=F64)[1:-1]


@pytest.mark.parametrize("name", list(PROCESSES))
def test_round_trips_are_exact(name):
    process = PROCESSES[name]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=F64)
    eps = torch.randn(64, 3, generator=g, dtype=F64)
    t = interior_times(process).repeat(13)[:64]
    c = process.coefficients(t, x0)
    x = c.alpha * x0 + c.sigma * eps
    for kind in PREDICTIONS:
        a, b = to_x0_eps(kind, from_x0_eps(kind, x0, eps, c), x, c)
        torch.testing.assert_close(a, x0, rtol=1e-11, atol=1e-11, msg=kind)
        torch.testing.assert_close(b, eps, rtol=1e-11, atol=1e-11, msg=kind)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_every_pair_of_targets_converts_consistently(name):
    """Going kind_a -> (x0, eps) -> kind_b equals computing kind_b directly."""
    process = PROCESSES[name]
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(8, 2, generator=g, dtype=F64), torch.randn(8, 2, generator=g, dtype=F64)
    c = process.coefficients(float(interior_times(process)[2]), x0)
    x = c.alpha * x0 + c.sigma * eps
    for a, b in itertools.product(PREDICTIONS, PREDICTIONS):
        via = from_x0_eps(b, *to_x0_eps(a, from_x0_eps(a, x0, eps, c), x, c), c)
        torch.testing.assert_close(via, from_x0_eps(b, x0, eps, c), rtol=1e-10, atol=1e-10)


def test_targets_match_their_papers():
    process = H.VPSDE()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    t = 0.4
    c = process.coefficients(t, x0)
    x = process.q_sample(x0, t, eps)
    # v-prediction (Salimans & Ho 2022): v = alpha eps - sigma x0, and x0 = alpha x - sigma v
    v = from_x0_eps("v", x0, eps, c)
    torch.testing.assert_close(v, c.alpha * eps - c.sigma * x0)
    torch.testing.assert_close(c.alpha * x - c.sigma * v, x0)  # VP: alpha^2 + sigma^2 = 1
    # score of q(x_t | x_0) = -(x - alpha x0) / sigma^2 = -eps / sigma
    torch.testing.assert_close(from_x0_eps("score", x0, eps, c), -(x - c.alpha * x0) / c.sigma**2)
    # velocity is d/dt of x_t at fixed (x0, eps): check against autograd
    tt = torch.tensor(t, dtype=F64, requires_grad=True)
    xt = process.alpha(tt) * x0 + process.sigma(tt) * eps
    dx = torch.stack([torch.autograd.grad(xt[i, j], tt, retain_graph=True)[0]
                      for i in range(4) for j in range(2)]).reshape(4, 2)
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, c), dx)
    # rectified flow: the velocity target is eps - x0
    rf = H.RectifiedFlow()
    crf = rf.coefficients(0.3, x0)
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, crf), eps - x0)


def test_unknown_prediction_is_refused():
    c = H.VPSDE().coefficients(0.5, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="valid"):
        to_x0_eps("noise", torch.zeros(1, 1), torch.zeros(1, 1), c)
    with pytest.raises(ValueError, match="valid"):
        H.Denoiser(lambda x, t: x, H.VPSDE(), "epsilon")
