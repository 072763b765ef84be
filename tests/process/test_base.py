"""What holds for every GaussianProcess (hirune.process.base), on each discrete schedule, SDE
and flow path: q_sample's moments, the derivatives dalpha / dsigma against autograd and
finite differences, the base class's generic SDE formula on a closed form, and the inverse
of the EDM sigma.

Everything is float64.  Several tests carry a "harness" twin that runs the same check on a
deliberately wrong formula and asserts that the check rejects it, so a tolerance that is
too loose to catch the typical mistake shows up as a failure.
"""

from __future__ import annotations

import math

import pytest
import torch

from hirune import CondOT, DiscreteVP, RectifiedFlow, SubVPSDE, VESDE, VPSDE

f64 = torch.float64


# ----------------------------------------------------------------------------------------
# q_sample
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("proc", [DiscreteVP("linear"), DiscreteVP("cosine"), VPSDE(), SubVPSDE(),
                                  VESDE(), RectifiedFlow(), CondOT()], ids=repr)
def test_q_sample_moments(proc):
    """x_t = alpha x_0 + sigma eps: per-time sample mean and variance against alpha x_0 and
    sigma^2.  With N samples the standard errors are sigma/sqrt(N) for the mean and
    sigma^2 sqrt(2/(N-1)) for the variance; the bound is 5 standard errors (a false alarm
    has probability < 1e-6 per moment, and the seed is fixed)."""
    N = 100_000
    ts = torch.tensor([proc.t_min, 0.2, 0.5, 0.8, 0.97], dtype=f64) * max(1.0, proc.t_max)
    ts = ts.clamp(proc.t_min, proc.t_max)
    g = torch.Generator().manual_seed(7)
    x0 = torch.tensor([1.5, -0.7, 2.0, 0.3, -1.1], dtype=f64)[:, None].expand(5, N)
    noise = torch.randn(5, N, generator=g, dtype=f64)
    xt = proc.q_sample(x0, ts, noise)
    alpha, sigma = proc.alpha(ts), proc.sigma(ts)
    assert _moments_ok(xt, alpha * x0[:, 0], sigma, N)
    # harness: the check rejects sigma^2 in place of sigma and alpha, sigma swapped
    bad = (alpha[:, None] * x0 + sigma[:, None] ** 2 * noise)
    assert not _moments_ok(bad, alpha * x0[:, 0], sigma, N)
    bad = (sigma[:, None] * x0 + alpha[:, None] * noise)
    assert not _moments_ok(bad, alpha * x0[:, 0], sigma, N)


def _moments_ok(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, N: int, z: float = 5.0) -> bool:
    m, v = x.mean(1), x.var(1)
    se_m = std / math.sqrt(N) + 1e-15
    se_v = std**2 * math.sqrt(2 / (N - 1)) + 1e-15
    return bool(((m - mean).abs() <= z * se_m).all() and ((v - std**2).abs() <= z * se_v).all())


# ----------------------------------------------------------------------------------------
# Every process: derivatives, the generic SDE formula, EDM sigma inverse
# ----------------------------------------------------------------------------------------

PROCESSES = [
    DiscreteVP("linear"), DiscreteVP("cosine"), VPSDE(), VPSDE(beta_min=0.5, beta_max=12.0),
    SubVPSDE(), VESDE(), VESDE(sigma_min=0.002, sigma_max=80.0), RectifiedFlow(), CondOT(),
    CondOT(sigma_min=0.1),
]


def _times(proc) -> torch.Tensor:
    if proc.discrete:  # away from the integer nodes, where alpha has kinks
        return torch.tensor([0.3, 10.5, 123.25, 500.7, 998.4], dtype=f64)
    return torch.tensor([max(proc.t_min, 1e-3) + 1e-3, 0.1, 0.37, 0.5, 0.83, 0.99], dtype=f64)


def _autograd(fn, t: torch.Tensor) -> torch.Tensor:
    t = t.clone().requires_grad_(True)
    out = fn(t)
    if not out.requires_grad:  # constant in t (VE alpha)
        return torch.zeros_like(t)
    (g,) = torch.autograd.grad(out.sum(), t, allow_unused=True)
    return torch.zeros_like(t) if g is None else g


def _check_derivatives(proc) -> None:
    t = _times(proc)
    h = 1e-3 if proc.discrete else 1e-6
    for name in ("alpha", "sigma"):
        f, d = getattr(proc, name), getattr(proc, "d" + name)(t)
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(d, fd, rtol=1e-6, atol=1e-8, msg=f"{proc!r} d{name} vs finite differences")
        torch.testing.assert_close(d, _autograd(f, t), rtol=1e-10, atol=1e-12, msg=f"{proc!r} d{name} vs autograd")


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_derivatives_match_autograd_and_finite_differences(proc):
    _check_derivatives(proc)


def test_derivative_check_rejects_wrong_dsigma():
    """Harness: VP with the chain-rule factor 1/2 dropped from dsigma is caught."""
    class BadVP(VPSDE):
        def dsigma(self, t):
            return 2 * super().dsigma(t)

    with pytest.raises(AssertionError):
        _check_derivatives(BadVP())


def test_generic_sde_on_rectified_flow_closed_form():
    """Base-class formula on x_t = (1 - t) x0 + t eps: f = -1/(1 - t), g^2 = 2t/(1 - t)."""
    t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=f64)
    f, g2 = RectifiedFlow().sde(t)
    torch.testing.assert_close(f, -1 / (1 - t), rtol=1e-14, atol=0)
    torch.testing.assert_close(g2, 2 * t / (1 - t), rtol=1e-13, atol=0)


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_t_from_edm_sigma_inverts_edm_sigma(proc):
    t = _times(proc)
    if proc.discrete:
        t = torch.cat([t, torch.tensor([0.0, 1.0, 250.0, 999.0], dtype=f64)])
    else:
        t = torch.cat([t, torch.tensor([proc.t_min, 0.999], dtype=f64)])
    s = proc.edm_sigma(t)
    back = proc.t_from_edm_sigma(s)
    torch.testing.assert_close(back, t, rtol=0, atol=1e-9 * max(1.0, proc.t_max))
    grid = torch.linspace(proc.t_min, proc.t_max * (0.999 if not proc.discrete else 1.0), 200, dtype=f64)
    assert (proc.edm_sigma(grid).diff() > 0).all(), "edm_sigma must increase with t"
    for u in (0.37, float(t[2])):  # scalar inputs too
        assert abs(float(proc.t_from_edm_sigma(float(proc.edm_sigma(u)))) - u) < 1e-9 * max(1.0, proc.t_max)
