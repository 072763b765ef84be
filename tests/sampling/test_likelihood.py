"""Tests of hirune.sampling.likelihood.ode_log_likelihood against exact Gaussian-mixture densities.

For a Gaussian mixture the noisy marginals p_t are known in closed form and the exact
denoiser gives the exact probability-flow ODE, so log p_{t_min}(x) from the ODE has a
ground truth: `GaussianMixture.log_prob(x, process, t_min)`.  With the true terminal marginal
as the prior the only error left is the ODE solver's; with the default Gaussian prior the
error is exactly the prior mismatch at the end point x_T, which is checked as such.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import hirune.sampling.likelihood as likelihood
from hirune import VESDE, VPSDE, Denoiser, DiscreteVP, GaussianMixture, RectifiedFlow
from hirune.sampling.likelihood import ode_log_likelihood
from hirune.process.mixture import demo_mixture
from hirune.process.schedules import linear_betas

F64 = torch.float64




# --- fixtures ---------------------------------------------------------------------------------


def points_2d() -> torch.Tensor:
    """16 points: 10 drawn from the demo mixture, 6 off-distribution (between the modes,
    far in the tails)."""
    gm = demo_mixture()
    data = gm.sample(10, generator=torch.Generator().manual_seed(1))
    off = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-4.0, 3.0], [0.0, -4.0], [3.0, 3.0],
                        [-1.0, 1.5]], dtype=F64)
    return torch.cat([data, off])


def mixture_8d() -> GaussianMixture:
    g = torch.Generator().manual_seed(3)
    K, D = 3, 8
    return GaussianMixture(means=2 * torch.randn(K, D, generator=g, dtype=F64),
                           stds=0.3 + 0.7 * torch.rand(K, D, generator=g, dtype=F64),
                           weights=[0.5, 0.3, 0.2])


def points_8d(gm: GaussianMixture) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    data = gm.sample(4, generator=g)
    far = 3 * torch.randn(2, gm.dim, generator=g, dtype=F64)  # off-distribution, log p ~ -190
    return torch.cat([data, far])


def discrete_one_segment() -> DiscreteVP:
    """A DiscreteVP with T = 2: time runs over the single interpolation segment [0, 1], on
    which alpha is linear and the probability-flow ODE is smooth (across many segments the
    likelihood integrates piecewise; see test_rk45_on_discrete_schedule_across_segments)."""
    return DiscreteVP(betas=torch.tensor([0.02, 0.95], dtype=F64))


PROCESSES = {
    "vp": (VPSDE, "eps"),
    "ve": (lambda: VESDE(sigma_min=0.01, sigma_max=20.0), "eps"),
    "rectified_flow": (RectifiedFlow, "velocity"),
    "discrete_T2": (discrete_one_segment, "eps"),
}


def true_prior(gm, process):
    return lambda xT: gm.log_prob(xT, process, process.t_max)


# --- exact divergence + rk45 against the true density -----------------------------------------


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_divergence_matches_true_log_density(name):
    make, prediction = PROCESSES[name]
    process, gm, x = make(), demo_mixture(), points_2d()
    den = gm.denoiser(process, prediction)
    out = ode_log_likelihood(den, x, rtol=1e-8, atol=1e-8, prior_log_prob=true_prior(gm, process))
    truth = gm.log_prob(x, process, process.t_min)
    err = (out.log_prob - truth).abs().max().item()
    # measured max over the 16 points: vp 9e-8, ve 5e-7, rectified flow 5e-8
    assert err < 1e-6, f"{name}: max |log p error| = {err:.2e} (nfe {out.nfe})"
    assert out.stderr is None
    assert out.nfe > 100  # it really integrated adaptively


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_default_gaussian_prior(name):
    """With the default prior N(0, sigma(t_max)^2 I) the error is exactly the prior mismatch
    log N(x_T; 0, sigma_T^2) - log p_{t_max}(x_T) at the end point x_T of each trajectory."""
    make, prediction = PROCESSES[name]
    process, gm, x = make(), demo_mixture(), points_2d()
    den = gm.denoiser(process, prediction)
    seen = {}

    def spy(xT):
        seen["xT"] = xT.clone()
        return gm.log_prob(xT, process, process.t_max)

    tol = 1e-6
    with_true = ode_log_likelihood(den, x, rtol=tol, atol=tol, prior_log_prob=spy)
    default = ode_log_likelihood(den, x, rtol=tol, atol=tol)
    truth = gm.log_prob(x, process, process.t_min)
    mismatch = process.prior_log_prob(seen["xT"]) - gm.log_prob(seen["xT"], process, process.t_max)
    assert torch.allclose(default.log_prob - with_true.log_prob, mismatch, rtol=0, atol=1e-12)
    # Size of the mismatch.  VP: alpha(1) = exp(-5.025) = 0.0066, so the terminal marginal's
    # means alpha mu (|mu| <= 2.7) are off the origin by < 0.02 sigma: a few 1e-2 nats
    # (measured 0.03).  VE: sigma_max = 20 is only ~8x the data's radius, means stay put:
    # (2 x.mu - |mu|^2) / (2 sigma_max^2) with |x_T| up to ~3 sigma_max is a few 0.1 nats
    # (measured 0.31).  Rectified flow ends at alpha = 0: the default prior is exact.
    # The toy discrete_T2 schedule ends at alpha = 0.22, far from noise: only the identity above.
    bound = {"vp": 0.1, "ve": 0.5, "rectified_flow": 1e-3, "discrete_T2": math.inf}[name]
    assert (default.log_prob - truth).abs().max() < bound
    if name == "rectified_flow":
        assert mismatch.abs().max() < 1e-12
    if name == "ve":  # the VE prior is really too narrow here: make sure the test sees it
        assert (default.log_prob - truth).abs().max() > 0.05


# --- parameterization invariance -------------------------------------------------------------


@pytest.mark.parametrize("name,predictions,t_start", [
    ("vp", ["eps", "x0", "v", "score", "velocity"], None),
    ("ve", ["eps", "x0", "v", "score", "velocity"], None),
    # x0 prediction cannot give eps = (x - alpha x0) / sigma at sigma = 0 (t = 0): start the
    # comparison at t = 1e-3 (see test_rectified_flow_x0_at_t0_fails_loudly)
    ("rectified_flow", ["x0", "v", "velocity"], 1e-3),
    ("discrete_T2", ["eps", "x0", "v", "score", "velocity"], None),
])
def test_parameterization_invariance(name, predictions, t_start):
    make, _ = PROCESSES[name]
    process, gm, x = make(), demo_mixture(), points_2d()[::2]
    # The ODE is the same whatever the network predicts, up to rounding: the step sequence
    # and the answer agree far below the solver tolerance (measured < 1e-11).
    results = {p: ode_log_likelihood(gm.denoiser(process, p), x, rtol=1e-5, atol=1e-5,
                                     t_start=t_start, prior_log_prob=true_prior(gm, process))
               for p in predictions}
    ref = results[predictions[0]].log_prob
    for p, r in results.items():
        diff = (r.log_prob - ref).abs().max().item()
        assert diff < 1e-6, f"{name}: {p} vs {predictions[0]} differ by {diff:.2e}"
    truth = gm.log_prob(x, process, process.t_min if t_start is None else t_start)
    assert (ref - truth).abs().max() < 1e-3


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_eps_and_score_refused_for_flows(prediction):
    with pytest.raises(ValueError, match=r"alpha\(t_max\) = 0"):
        demo_mixture().denoiser(RectifiedFlow(), prediction)
    with pytest.raises(ValueError, match=r"alpha\(t_max\) = 0"):
        Denoiser(lambda x, t: x, RectifiedFlow(), prediction)


# --- Hutchinson in D = 8 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hutchinson_setup():
    """The 8-D mixture under VP, 6 points, and the exact-divergence reference."""
    gm, process = mixture_8d(), VPSDE()
    x = points_8d(gm)
    den = gm.denoiser(process, "eps")
    prior = true_prior(gm, process)
    exact = ode_log_likelihood(den, x, rtol=1e-7, atol=1e-7, prior_log_prob=prior)
    # the reference itself is right (measured 2.6e-6 at this tolerance; the Hutchinson
    # standard errors are 1e-2 .. 1)
    assert (exact.log_prob - gm.log_prob(x, process, process.t_min)).abs().max() < 1e-5
    return SimpleNamespace(gm=gm, process=process, x=x, den=den, prior=prior, exact=exact.log_prob)


def hutchinson(setup, repeats, probe, seed, x=None):
    return ode_log_likelihood(setup.den, setup.x if x is None else x, divergence="hutchinson",
                              repeats=repeats, probe=probe, rtol=1e-6, atol=1e-6,
                              prior_log_prob=setup.prior,
                              generator=torch.Generator().manual_seed(seed))


def assert_unbiased(estimate, exact, max_z=4.0):
    z = (estimate.log_prob - exact) / estimate.stderr
    assert z.abs().max() < max_z, f"z-scores {z.tolist()}"
    # the z-scores are ~N(0, 1): their mean square is ~chi2_6 / 6 (99.9% quantile 3.7)
    assert z.pow(2).mean() < 3.7, f"z-scores {z.tolist()}"
    return z


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_divergence(hutchinson_setup, probe):
    s = hutchinson_setup
    est = hutchinson(s, 256, probe, seed=0)
    assert est.stderr is not None and est.stderr.shape == (len(s.x),)
    assert (est.stderr > 0).all()
    assert_unbiased(est, s.exact)
    # the estimate is useful: within a few 0.1 nats of the truth for 256 probes
    assert (est.log_prob - s.exact).abs().max() < 1.0


def test_hutchinson_stderr_shrinks_like_inverse_sqrt_repeats(hutchinson_setup):
    s = hutchinson_setup
    few, many = hutchinson(s, 32, "rademacher", seed=1), hutchinson(s, 128, "rademacher", seed=2)
    # 4x the probes: half the standard error.  Each point's ratio is noisy (a standard
    # deviation from 32 draws of a heavy-tailed quadratic form: 0.3 .. 0.9), their geometric
    # mean over the 6 points much less so (0.45 .. 0.60 over 6 seeds).
    ratio = (many.stderr / few.stderr).log().mean().exp().item()
    assert 0.38 < ratio < 0.68, f"stderr ratio {ratio:.3f}"


def test_hutchinson_stderr_is_calibrated(hutchinson_setup):
    """32 independent estimates of the same points (each from 16 probes): their spread
    must match the standard error that each of them reports."""
    s = hutchinson_setup
    copies, repeats = 32, 16
    x = s.x[:2].repeat(copies, 1)                       # rows: point 0, point 1, point 0, ...
    est = hutchinson(s, repeats, "rademacher", seed=3, x=x)
    logp = est.log_prob.reshape(copies, 2)
    reported = est.stderr.reshape(copies, 2).mean(0)
    empirical = logp.std(0)
    ratio = empirical / reported
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), f"empirical/reported stderr {ratio.tolist()}"
    # and the mean of all 32 x 16 probes is unbiased
    z = (logp.mean(0) - s.exact[:2]) / (empirical / math.sqrt(copies))
    assert z.abs().max() < 4.0


def test_hutchinson_probe_kinds(hutchinson_setup, monkeypatch):
    """Rademacher probes are +-1; Gaussian ones are not, and (having diagonal terms the
    Rademacher estimator does not) give a larger variance."""
    s = hutchinson_setup
    seen = []
    real = likelihood._divergence

    def spy(u, x, method, probe):
        seen.append(probe)
        return real(u, x, method, probe)

    monkeypatch.setattr(likelihood, "_divergence", spy)
    x = s.x[:2]
    ode_log_likelihood(s.den, x, divergence="hutchinson", repeats=8, probe="rademacher",
                       solver="euler", steps=2)
    assert len(seen) == 2 and seen[0] is seen[1]     # one fixed probe per trajectory
    assert seen[0].shape == (16, 8) and torch.equal(seen[0].abs(), torch.ones(16, 8, dtype=F64))
    seen.clear()
    ode_log_likelihood(s.den, x, divergence="hutchinson", repeats=8, probe="gaussian",
                       solver="euler", steps=2)
    assert not torch.equal(seen[0].abs(), torch.ones(16, 8, dtype=F64))
    monkeypatch.setattr(likelihood, "_divergence", real)
    rad = hutchinson(s, 64, "rademacher", seed=5)
    gau = hutchinson(s, 64, "gaussian", seed=5)
    assert gau.stderr.pow(2).mean() > 1.5 * rad.stderr.pow(2).mean()


def test_hutchinson_same_generator_same_answer(hutchinson_setup):
    s = hutchinson_setup
    x = s.x[:2]
    a = ode_log_likelihood(s.den, x, divergence="hutchinson", repeats=4, solver="euler", steps=5,
                           generator=torch.Generator().manual_seed(7))
    b = ode_log_likelihood(s.den, x, divergence="hutchinson", repeats=4, solver="euler", steps=5,
                           generator=torch.Generator().manual_seed(7))
    c = ode_log_likelihood(s.den, x, divergence="hutchinson", repeats=4, solver="euler", steps=5,
                           generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.log_prob, b.log_prob) and not torch.equal(a.log_prob, c.log_prob)


def test_harness_rejects_biased_hutchinson(hutchinson_setup, monkeypatch):
    """A Hutchinson estimator that is 3% too large must fail the z-score check."""
    s = hutchinson_setup
    real = likelihood._divergence
    monkeypatch.setattr(likelihood, "_divergence",
                        lambda u, x, m, p: 1.03 * real(u, x, m, p) if m == "hutchinson"
                        else real(u, x, m, p))
    est = hutchinson(s, 256, "rademacher", seed=0)
    with pytest.raises(AssertionError):
        assert_unbiased(est, s.exact)


# --- fixed-step solvers ----------------------------------------------------------------------


def test_heun_agrees_with_rk45():
    process, gm, x = VPSDE(), demo_mixture(), points_2d()
    den = gm.denoiser(process, "eps")
    prior = true_prior(gm, process)
    ref = ode_log_likelihood(den, x, rtol=1e-6, atol=1e-6, prior_log_prob=prior).log_prob
    errs = {}
    for steps in (200, 400):
        out = ode_log_likelihood(den, x, solver="heun", steps=steps, prior_log_prob=prior)
        assert out.nfe == 2 * steps
        errs[steps] = (out.log_prob - ref).abs().max().item()
    # measured 3.9e-3 and 1.0e-3 (rk45 itself is 2e-5 off the truth here): second order
    assert errs[400] < 2e-3
    assert 3.0 < errs[200] / errs[400] < 5.5


def discrete_50() -> DiscreteVP:
    """A short DDPM-like schedule: 50 linear betas from 2e-3 to 0.4 (49 segments)."""
    return DiscreteVP(betas=linear_betas(50, 2e-3, 0.4))


def fixed_step_errors(process, solver, per_segment, x):
    gm = demo_mixture()
    den = gm.denoiser(process, "eps")
    truth = gm.log_prob(x, process, process.t_min)
    errs = []
    for k in per_segment:
        out = ode_log_likelihood(den, x, solver=solver, steps=k * int(process.t_max),
                                 prior_log_prob=true_prior(gm, process))
        errs.append((out.log_prob - truth).abs().max().item())
    return errs


def test_midpoint_second_order_across_discrete_segments():
    """DiscreteVP is piecewise linear in alpha, so the probability-flow velocity jumps at
    integer times.  With steps aligned to the segments, midpoint only evaluates at a segment
    start (the right limit, correct) and inside: still second order (measured 5.6e-2 ->
    1.3e-2, data points 2.1e-3 -> 5.1e-4)."""
    e2, e4 = fixed_step_errors(discrete_50(), "midpoint", (2, 4), points_2d())
    assert e4 < 2e-2
    assert 3.0 < e2 / e4 < 5.5


def test_heun_across_discrete_segments():
    (err,) = fixed_step_errors(discrete_50(), "heun", (4,), points_2d())
    # midpoint: 1.3e-2 at 4 steps per segment; Heun with the segment ends evaluated from the
    # inside: 1.7e-2
    assert err < 5e-2


@pytest.mark.slow
def test_midpoint_on_ddpm_schedule():
    """The real DDPM schedule (T = 1000), one midpoint step per segment (measured 4.6e-4,
    1.9e-5 on the data points; 1.2e-4 with two steps per segment)."""
    (err,) = fixed_step_errors(DiscreteVP("linear", 1000), "midpoint", (1,), points_2d())
    assert err < 1e-3


def test_rk45_on_discrete_schedule_across_segments():
    process = DiscreteVP(betas=linear_betas(10, 1e-2, 0.5))
    gm, x = demo_mixture(), points_2d()[::2]
    out = ode_log_likelihood(gm.denoiser(process, "eps"), x, rtol=1e-5, atol=1e-5,
                             prior_log_prob=true_prior(gm, process))
    # continuous processes (vp, ve, rectified flow) reach 3e-4 .. 6e-4 at this tolerance
    assert (out.log_prob - gm.log_prob(x, process, process.t_min)).abs().max() < 2e-3


# --- output bookkeeping ------------------------------------------------------------------


class FlatDenoiser:
    """Presents a (B, D) mixture denoiser on image-shaped inputs (B, C, H, W)."""

    def __init__(self, den):
        self.den, self.process = den, den.process

    def __call__(self, x, t, **cond):
        return SimpleNamespace(velocity=self.den(x.flatten(1), t).velocity.reshape(x.shape))


def test_nll_and_bits_per_dim():
    gm = mixture_8d()
    process = VPSDE()
    den = gm.denoiser(process, "eps")
    x = points_8d(gm)[:3]
    flat = ode_log_likelihood(den, x, rtol=1e-5, atol=1e-5)
    img = ode_log_likelihood(FlatDenoiser(den), x.reshape(3, 2, 2, 2), rtol=1e-5, atol=1e-5)
    for out in (flat, img):
        assert out.log_prob.shape == out.nll.shape == out.bits_per_dim.shape == (3,)
        assert torch.equal(out.nll, -out.log_prob)
        assert torch.allclose(out.bits_per_dim, out.nll / (8 * math.log(2)), rtol=1e-15, atol=0)
    # the per-sample dimension is the number of elements, not the length of dim 1
    assert torch.allclose(img.log_prob, flat.log_prob, rtol=0, atol=1e-12)
    assert img.nfe == flat.nfe
    assert likelihood.bits_per_dim(torch.tensor([math.log(2) * 6]), 3).item() == pytest.approx(2.0)
    # 2-D: D = 2
    gm2 = demo_mixture()
    out = ode_log_likelihood(gm2.denoiser(process), points_2d()[:2], solver="heun", steps=10)
    assert torch.allclose(out.bits_per_dim, -out.log_prob / (2 * math.log(2)), rtol=1e-15, atol=0)


def test_t_start_gives_density_at_that_time():
    process, gm, x = VPSDE(), demo_mixture(), points_2d()[::4]
    out = ode_log_likelihood(gm.denoiser(process), x, t_start=0.3, rtol=1e-7, atol=1e-7,
                             prior_log_prob=true_prior(gm, process))
    assert (out.log_prob - gm.log_prob(x, process, 0.3)).abs().max() < 1e-5
    # and it is not the density at t_min
    assert (out.log_prob - gm.log_prob(x, process, process.t_min)).abs().max() > 0.1


# --- bad input ---------------------------------------------------------------------------


class MustNotBeCalled:
    process = VPSDE()

    def __call__(self, *args, **kwargs):
        raise AssertionError("input should have been rejected before any evaluation")


def test_unknown_divergence_rejected():
    with pytest.raises(ValueError, match=r"valid: \['exact', 'hutchinson'\]"):
        ode_log_likelihood(MustNotBeCalled(), torch.zeros(2, 2, dtype=F64), divergence="hutch")


def test_unknown_solver_rejected():
    with pytest.raises(ValueError, match=r"valid: \['rk45', 'euler', 'midpoint', 'heun'\]"):
        ode_log_likelihood(MustNotBeCalled(), torch.zeros(2, 2, dtype=F64), solver="rk4")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_rejected(bad):
    x = torch.zeros(3, 2, dtype=F64)
    x[1, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        ode_log_likelihood(MustNotBeCalled(), x)


def test_unknown_probe_rejected():
    with pytest.raises(ValueError, match="probe"):
        ode_log_likelihood(MustNotBeCalled(), torch.zeros(2, 2, dtype=F64),
                           divergence="hutchinson", probe="rademacher_typo")


def test_rectified_flow_x0_at_t0_fails_loudly():
    den = demo_mixture().denoiser(RectifiedFlow(), "x0")
    with pytest.raises((ValueError, FloatingPointError, RuntimeError), match="finite"):
        ode_log_likelihood(den, points_2d()[:2], solver="euler", steps=4)


# --- the harness rejects broken variants -------------------------------------------------------


@pytest.mark.parametrize("variant", ["negated", "dropped", "off_by_1_percent"])
def test_harness_rejects_broken_divergence(monkeypatch, variant):
    """The same comparison as test_exact_divergence_matches_true_log_density, with the
    divergence negated, left out, or scaled by 1.01: it must miss by a clear margin
    (measured max errors 20, 10 and 0.1 nats against 1e-6 for the real one)."""
    real = likelihood._divergence
    scale = {"negated": -1.0, "dropped": 0.0, "off_by_1_percent": 1.01}[variant]
    monkeypatch.setattr(likelihood, "_divergence", lambda *a: scale * real(*a))
    process, gm, x = VPSDE(), demo_mixture(), points_2d()
    out = ode_log_likelihood(gm.denoiser(process), x, rtol=1e-6, atol=1e-6,
                             prior_log_prob=true_prior(gm, process))
    err = (out.log_prob - gm.log_prob(x, process, process.t_min)).abs().max().item()
    assert err > 0.05, f"broken variant {variant} not detected: error {err:.2e}"
