"""The SDEs of Song et al. 2021 (hirune.process.sde): VP, sub-VP and VE.  Their closed-form
drift and diffusion against the paper and the generic formula of GaussianProcess, their end
points (VP and sub-VP share alpha, sub-VP has the smaller variance), and bad parameters.

Everything is float64.  Several tests carry a "harness" twin that runs the same check on a
deliberately wrong formula and asserts that the check rejects it, so a tolerance that is
too loose to catch the typical mistake shows up as a failure.
"""

from __future__ import annotations

import math

import pytest
import torch

from hirune import GaussianProcess, SubVPSDE, VESDE, VPSDE

f64 = torch.float64


SDES = [VPSDE(), VPSDE(beta_min=0.5, beta_max=12.0), SubVPSDE(), SubVPSDE(beta_min=0.3, beta_max=5.0),
        VESDE(), VESDE(sigma_min=0.002, sigma_max=80.0)]


def _paper_sde(proc, t):
    """Song et al. 2021, eq. 11 and appendix B, written from scratch."""
    if isinstance(proc, VESDE):
        s = proc.sigma_min * (proc.sigma_max / proc.sigma_min) ** t
        return torch.zeros_like(t), s**2 * 2 * math.log(proc.sigma_max / proc.sigma_min)
    beta = proc.beta_min + t * (proc.beta_max - proc.beta_min)
    integral = proc.beta_min * t + 0.5 * (proc.beta_max - proc.beta_min) * t**2
    if isinstance(proc, SubVPSDE):
        return -0.5 * beta, beta * (1 - torch.exp(-2 * integral))
    return -0.5 * beta, beta


def _check_sde(proc, t):
    f, g2 = proc.sde(t)
    f_gen, g2_gen = GaussianProcess.sde(proc, t)
    torch.testing.assert_close(f, f_gen, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g2, g2_gen, rtol=1e-9, atol=1e-12)
    return f, g2


@pytest.mark.parametrize("proc", SDES, ids=repr)
def test_sde_closed_forms_match_generic_formula_and_paper(proc):
    t = torch.tensor([1e-3, 0.05, 0.3, 0.5, 0.77, 1.0], dtype=f64)
    f, g2 = _check_sde(proc, t)
    f_ref, g2_ref = _paper_sde(proc, t)
    torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g2, g2_ref, rtol=1e-12, atol=1e-14)


def test_sde_check_rejects_subvp_missing_factor_two():
    """Harness: sub-VP with g^2 = beta (1 - e^{-B}) instead of beta (1 - e^{-2B}) is caught."""
    class BadSubVP(SubVPSDE):
        def sde(self, t):
            return -0.5 * self.beta(t), self.beta(t) * -torch.expm1(-self.beta_integral(t))

    with pytest.raises(AssertionError):
        _check_sde(BadSubVP(), torch.tensor([0.05, 0.3, 0.5], dtype=f64))


def test_ve_end_points():
    for smin, smax in ((0.01, 50.0), (0.002, 80.0)):
        p = VESDE(smin, smax)
        assert abs(float(p.sigma(0.0)) / smin - 1) < 1e-15
        assert abs(float(p.sigma(1.0)) / smax - 1) < 1e-14
        assert (p.alpha(torch.linspace(0, 1, 5, dtype=f64)) == 1).all()
        assert abs(float(p.edm_sigma(0.5)) - math.sqrt(smin * smax)) < 1e-12 * smax


def test_vp_and_subvp_end_points_and_ordering():
    vp, sub = VPSDE(), SubVPSDE()
    assert float(vp.alpha(0.0)) == 1.0 and float(vp.sigma(0.0)) == 0.0
    assert abs(float(vp.alpha(1.0)) - math.exp(-0.5 * (0.1 + 0.5 * 19.9))) < 1e-15
    t = torch.linspace(0, 1, 101, dtype=f64)
    torch.testing.assert_close(sub.alpha(t), vp.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-15)
    assert (sub.sigma(t) ** 2 <= vp.sigma(t) ** 2).all()
    assert (sub.sigma(t[1:]) ** 2 < vp.sigma(t[1:]) ** 2).all()


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
@pytest.mark.parametrize("bmin,bmax", [(20.0, 0.1), (0.0, 20.0), (-1.0, 20.0), (5.0, 5.0)])
def test_vp_bad_betas(cls, bmin, bmax):
    with pytest.raises(ValueError, match="beta_min"):
        cls(beta_min=bmin, beta_max=bmax)


@pytest.mark.parametrize("smin,smax", [(50.0, 0.01), (0.0, 50.0), (1.0, 1.0)])
def test_ve_bad_sigmas(smin, smax):
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=smin, sigma_max=smax)
