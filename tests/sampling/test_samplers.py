"""Every sampler, started from noise with the exact score of a Gaussian mixture, must
produce the mixture (harness.py), whatever the process and parameterization."""

from __future__ import annotations

import pytest
import torch

import hirune as H
import hirune.sampling as S
from hirune.process.denoiser import Denoiser
from hirune.sampling.timesteps import respace, time_grid

from harness import GM, N, SW_TOL, TRUTH, matches_mixture
from hirune.metrics.distances import sliced_wasserstein

F64 = torch.float64


def run(process, prediction, sampler, steps, spacing=None, seed=0, n=N, **options):
    return H.sample(GM.denoiser(process, prediction), (n, 2), sampler, steps, spacing,
                    seed=seed, dtype=F64, **options)


# (id, process, prediction, sampler, steps, spacing, options): step counts are where the
# discretisation error of each method sits well inside the harness tolerances.
CONFIGS = [
    ("ddpm-small-1000", lambda: H.DiscreteVP("linear"), "eps", "ddpm", 1000, None, {}),
    ("ddim-50-trailing", lambda: H.DiscreteVP("linear"), "eps", "ddim", 50, None, {}),
    ("ddim-50-leading", lambda: H.DiscreteVP("cosine"), "x0", "ddim", 50, "leading", {}),
    ("ddim-eta1-200", lambda: H.DiscreteVP("linear"), "eps", "ddim", 200, "linspace", {"eta": 1.0}),
    ("ddim-ztsnr-v-100", lambda: H.DiscreteVP("scaled_linear", zero_terminal_snr=True), "v",
     "ddim", 100, None, {}),
    ("langevin-ve", lambda: H.VESDE(0.01, 20), "score", "annealed_langevin", 30, "logsnr",
     {"steps_per_level": 50, "step_size": 5e-5}),
    ("euler-maruyama-vp", lambda: H.VPSDE(), "eps", "euler_maruyama", 500, None, {}),
    ("euler-maruyama-subvp", lambda: H.SubVPSDE(), "score", "euler_maruyama", 500, None, {}),
    ("pc-ve", lambda: H.VESDE(0.01, 20), "score", "pc", 300, None, {}),
    ("pc-vp-ancestral", lambda: H.VPSDE(), "eps", "pc", 300, None, {"predictor": "ancestral"}),
    ("pf-euler-vp", lambda: H.VPSDE(), "score", "euler", 200, None, {}),
    ("pf-heun-vp", lambda: H.VPSDE(), "eps", "heun", 30, None, {}),
    ("pf-heun-karras-ddpm", lambda: H.DiscreteVP("linear"), "eps", "heun", 20, "karras", {}),
    ("pf-rk45-ve", lambda: H.VESDE(0.01, 20), "score", "rk45", 2, None, {}),
    ("pf-rk45-ddpm", lambda: H.DiscreteVP("cosine"), "v", "rk45", 2, None, {}),
    ("flow-euler-rf", lambda: H.RectifiedFlow(), "velocity", "euler", 100, None, {}),
    ("flow-midpoint-condot", lambda: H.CondOT(), "velocity", "midpoint", 30, None, {}),
    ("flow-heun-rf", lambda: H.RectifiedFlow(), "x0", "heun", 30, None, {}),
    ("flow-heun-karras-rf", lambda: H.RectifiedFlow(), "velocity", "heun", 30, "karras",
     {"grid_options": {"sigma_min": 2e-3, "sigma_max": 80.0}}),
    ("dpmpp2m-cosine-25", lambda: H.DiscreteVP("cosine"), "eps", "dpmpp_2m", 25, None, {}),
    ("dpmpp2m-vp-karras-40", lambda: H.VPSDE(), "eps", "dpmpp_2m", 40, "karras", {}),
    ("dpmpp2m-rf-25", lambda: H.RectifiedFlow(), "velocity", "dpmpp_2m", 25, None, {}),
]


# the longest, opt-in (--runslow): ddpm is also checked by test_improved_ddpm_respaced_sampling_all_variances,
# annealed Langevin by tests/objectives/test_weighting.py's run over the noise levels
SLOW = ("ddpm-small-1000", "langevin-ve", "euler-maruyama-subvp", "pc-ve", "ddim-eta1-200")  # the others cover their methods


@pytest.mark.parametrize("cfg", [pytest.param(c, marks=pytest.mark.slow) if c[0] in SLOW else c for c in CONFIGS],
                         ids=[c[0] for c in CONFIGS])
def test_sampler_reproduces_mixture(cfg):
    _, make, prediction, sampler, steps, spacing, options = cfg
    out = run(make(), prediction, sampler, steps, spacing, **options)
    ok, errors = matches_mixture(out.x)
    assert ok, errors


def test_every_sampler_is_exercised():
    assert {c[3] for c in CONFIGS} == set(H.SAMPLERS)


@pytest.mark.slow  # long: opt in with --runslow (the suite's 10-minute budget)
def test_improved_ddpm_respaced_sampling_all_variances():
    """Improved DDPM: ancestral sampling on a respaced subset of 250 of 1000 steps, with the
    small, large and learned variances (learned interpolation v = 0.5 here)."""
    process = H.DiscreteVP("cosine")
    eps_model = GM.model(process, "eps")
    learned = Denoiser(lambda x, t: torch.cat([eps_model(x, t), torch.zeros_like(x)], 1),
                       process, "eps", learned_variance=True)
    ts = respace(1000, "250")
    for variance in ("small", "large", "learned"):
        g = torch.Generator().manual_seed(1)
        x = process.prior_sample((N, 2), g, F64)
        out = S.ddpm(learned, x, ts, variance=variance, generator=g)
        ok, errors = matches_mixture(out.x)
        assert ok, (variance, errors)


def test_learned_variance_interpolates_between_small_and_large():
    """v = 0 must give exactly beta tilde and v = 1 exactly beta (Improved DDPM eq. 15),
    also on a step where beta tilde is 0 (the variance is clamped before the log)."""
    process = H.RectifiedFlow()  # the last grid step lands on t = 0, where beta tilde = 0
    ts = time_grid(process, 8)
    eps_free = GM.model(process, "v")
    for frac, variance in ((0.0, "small"), (1.0, "large")):
        v_channel = 2 * frac - 1
        learned = Denoiser(lambda x, t: torch.cat([eps_free(x, t), torch.full_like(x, v_channel)], 1),
                           process, "v", learned_variance=True)
        x = process.prior_sample((64, 2), torch.Generator().manual_seed(0), F64)
        a = S.ddpm(learned, x, ts, variance="learned", generator=torch.Generator().manual_seed(3))
        b = S.ddpm(GM.denoiser(process, "v"), x, ts, variance=variance,
                   generator=torch.Generator().manual_seed(3))
        assert torch.isfinite(a.x).all()
        torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


# --- the same exact model written in every parameterization gives the same samples ---------

PROCESSES = {
    "ddpm": lambda: H.DiscreteVP("linear"),
    "vp": lambda: H.VPSDE(),
    "ve": lambda: H.VESDE(0.01, 20),
    "rf": lambda: H.RectifiedFlow(),
    "condot": lambda: H.CondOT(1e-3),
}
SAMPLER_OPTIONS = {"annealed_langevin": {"steps_per_level": 3}, "pc": {}, "ddim": {"eta": 0.5}}


@pytest.mark.parametrize("process_name", list(PROCESSES))
@pytest.mark.parametrize("sampler", sorted(H.SAMPLERS))
def test_parameterizations_give_identical_samples(process_name, sampler):
    process = PROCESSES[process_name]()
    singular = (sampler in ("euler_maruyama", "pc") and process_name in ("rf", "condot")
                or sampler == "annealed_langevin" and process_name == "rf")
    if singular:  # reverse SDE at alpha = 0; Langevin step sizes at sigma = 0
        with pytest.raises(ValueError, match="sigma|singular"):
            run(process, "v", sampler, 6, n=8)
        return
    predictions = ["x0", "v", "velocity"] + ([] if process_name in ("rf", "condot") else ["eps", "score"])
    opts = dict(SAMPLER_OPTIONS.get(sampler, {}))
    if sampler == "annealed_langevin":  # largest step 0.1 at the noisiest level
        ts = time_grid(process, 6)
        opts["step_size"] = 0.1 * float(process.sigma(ts[-1]) / process.sigma(ts[0])) ** 2
    outs = {p: run(process, p, sampler, 6, n=256, seed=5, **opts).x for p in predictions}
    for p in predictions[1:]:
        torch.testing.assert_close(outs[p], outs["x0"], rtol=1e-8, atol=1e-8, msg=p)


# --- bookkeeping: NFE, trajectory, determinism ----------------------------------------------

def test_nfe_and_trajectory_lengths():
    process = H.DiscreteVP("linear")
    D = GM.denoiser(process, "eps")
    ts = time_grid(process, 10)
    x = process.prior_sample((16, 2), torch.Generator().manual_seed(0), F64)
    expected_nfe = {"ddpm": 10, "ddim": 10, "euler": 10, "midpoint": 19, "heun": 19, "dpmpp_2m": 10,
                    "euler_maruyama": 10, "pc": 19, "annealed_langevin": 21}
    opts = {"annealed_langevin": {"steps_per_level": 2}}
    for name, nfe in expected_nfe.items():
        out = H.SAMPLERS[name](D, x, ts, return_trajectory=True, **opts.get(name, {}))
        assert out.nfe == nfe, name
        # the input, one entry per grid step, and the final jump to the data
        extra = 1 if name == "annealed_langevin" else 0
        assert len(out.trajectory) == len(ts) + 1 + extra, name
        assert out.trajectory[-1] is out.x
    # flows: sigma(0) = 0, so there is no final jump and no evaluation for it
    rf = H.RectifiedFlow()
    out = S.ode_euler(GM.denoiser(rf, "velocity"), x, time_grid(rf, 5))
    assert out.nfe == 4


def test_seeded_and_deterministic():
    process = H.VPSDE()
    a = run(process, "eps", "euler_maruyama", 20, n=64, seed=3)
    b = run(process, "eps", "euler_maruyama", 20, n=64, seed=3)
    c = run(process, "eps", "euler_maruyama", 20, n=64, seed=4)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


class Spy:
    """A denoiser that records the times it is evaluated at."""

    def __init__(self, inner):
        self.inner, self.process, self.times = inner, inner.process, []

    def __call__(self, x, t, **cond):
        self.times.append(float(t))
        return self.inner(x, t, **cond)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler_maruyama"])
def test_each_step_goes_to_the_next_grid_entry(spacing, sampler):
    """The pitfall of a fixed stride t - T//n: the model must be evaluated exactly at the
    grid times, in order, ending with the jump from the last entry."""
    process = H.DiscreteVP("linear")
    ts = time_grid(process, 7, spacing)
    spy = Spy(GM.denoiser(process, "eps"))
    x = process.prior_sample((4, 2), torch.Generator().manual_seed(0), F64)
    H.SAMPLERS[sampler](spy, x, ts)
    assert spy.times == ts.tolist()


def test_multistep_final_step_is_first_order():
    """DPM-Solver++(2M) must return exactly the x_0 estimate at the last grid time."""
    process = H.DiscreteVP("cosine")
    D = GM.denoiser(process, "eps")
    ts = time_grid(process, 6)
    x = process.prior_sample((32, 2), torch.Generator().manual_seed(0), F64)
    out = S.dpmpp_2m(D, x, ts, return_trajectory=True)
    last_state = out.trajectory[-2]
    torch.testing.assert_close(out.x, D(last_state, float(ts[-1])).x0, rtol=0, atol=0)


# --- the harness itself ------------------------------------------------------------------

@pytest.mark.slow
def test_harness_tolerances_sit_above_sampling_noise():
    """Exact samples of the mixture pass every check, with room to spare."""
    sws = []
    for seed in range(5):
        x = GM.sample(N, torch.Generator().manual_seed(1000 + seed))
        ok, errors = matches_mixture(x)
        assert ok, errors
        sws.append(errors["sw"])
    assert max(sws) < 0.8 * SW_TOL
    assert sliced_wasserstein(TRUTH, TRUTH) == 0


def _ddim_fixed_stride(denoiser, x, ts, generator=None, trajectory=None):
    """BROKEN: steps from t to t - T // n instead of the next grid entry."""
    process, stride = denoiser.process, denoiser.process.T // len(ts)
    trajectory = [] if trajectory is None else trajectory
    for t in ts.tolist():
        trajectory.append(x)
        pred = denoiser(x, t)
        s = t - stride
        if s < 0:
            return pred.x0
        c = process.coefficients(s, x)
        x = c.alpha * pred.x0 + c.sigma * pred.eps
    return x


def _ddpm_variance_not_sqrt(denoiser, x, ts, generator=None):
    """BROKEN: adds var * z instead of sqrt(var) * z."""
    pairs = list(zip(ts.tolist()[:-1], ts.tolist()[1:]))
    for t, s in pairs:
        pred = denoiser(x, t)
        mean, var, _ = denoiser.process.posterior(pred.x0, x, t, s)
        x = mean + var * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return denoiser(x, float(ts[-1])).x0


def _pf_ode_without_half(denoiser, x, ts, generator=None):
    """BROKEN: the probability-flow drift f x - g^2 score, missing the factor 1/2."""
    for t, s in zip(ts.tolist()[:-1], ts.tolist()[1:]):
        f, g2 = (v.to(x) for v in denoiser.process.sde(t))
        x = x + (s - t) * (f * x - g2 * denoiser(x, t).score)
    return denoiser(x, float(ts[-1])).x0


def _flow_wrong_direction(denoiser, x, ts, generator=None):
    """BROKEN: a velocity model from the t = 0 = noise convention used without the sign flip."""
    for t, s in zip(ts.tolist()[:-1], ts.tolist()[1:]):
        x = x - (s - t) * denoiser(x, t).velocity
    return x


def _dpmpp_2m_inverted_ratio(denoiser, x, ts, generator=None):
    """BROKEN: DPM-Solver++(2M) with r = h / h_prev instead of h_prev / h."""
    process, x0_prev, h_prev = denoiser.process, None, None
    for t, s in zip(ts.tolist()[:-1], ts.tolist()[1:]):
        pred = denoiser(x, t)
        ct, cs = pred.coeffs, process.coefficients(s, x)
        h = float(process.log_snr(s) - process.log_snr(t)) / 2
        d = pred.x0
        if x0_prev is not None:
            r = h / h_prev
            d = (1 + 1 / (2 * r)) * pred.x0 - 1 / (2 * r) * x0_prev
        x = cs.sigma / ct.sigma * x - cs.alpha * (torch.exp(torch.tensor(-h)) - 1) * d
        x0_prev, h_prev = pred.x0, h
    return denoiser(x, float(ts[-1])).x0


BROKEN = [
    ("ddpm-var-not-sqrt", _ddpm_variance_not_sqrt, lambda: H.DiscreteVP("linear"), "eps", 1000, None),
    ("pf-ode-no-half", _pf_ode_without_half, lambda: H.VPSDE(), "eps", 200, None),
    ("flow-wrong-direction", _flow_wrong_direction, lambda: H.RectifiedFlow(), "velocity", 50, None),
    ("dpmpp2m-inverted-ratio", _dpmpp_2m_inverted_ratio, lambda: H.DiscreteVP("cosine"), "eps", 15, None),
]


@pytest.mark.parametrize("case", [pytest.param(b, marks=pytest.mark.slow) if b[0] == "ddpm-var-not-sqrt" else b
                                  for b in BROKEN], ids=[b[0] for b in BROKEN])  # 1000 steps: ~16 s, slow
def test_harness_rejects_broken_samplers(case):
    _, broken, make, prediction, steps, spacing = case
    process = make()
    ts = time_grid(process, steps, spacing)
    g = torch.Generator().manual_seed(0)
    x = process.prior_sample((N, 2), g, F64)
    ok, errors = matches_mixture(broken(GM.denoiser(process, prediction), x, ts, generator=g))
    assert not ok, errors


def test_correct_counterpart_of_broken_multistep_passes():
    """The broken DPM-Solver++ fails because of the bug, not the setting: the correct
    solver at the same 15 steps passes."""
    ok, errors = matches_mixture(run(H.DiscreteVP("cosine"), "eps", "dpmpp_2m", 15).x)
    assert ok, errors


def _lands_on_grid(trajectory, denoiser, ts) -> bool:
    """Does each deterministic DDIM step from ts[i] land exactly at ts[i + 1]?"""
    for i in range(len(ts) - 1):
        pred = denoiser(trajectory[i], float(ts[i]))
        c = denoiser.process.coefficients(float(ts[i + 1]), pred.x0)
        if not torch.allclose(trajectory[i + 1], c.alpha * pred.x0 + c.sigma * pred.eps, atol=1e-12):
            return False
    return True


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_step_lands_on_the_next_grid_entry(spacing):
    process = H.DiscreteVP("linear")
    ts = time_grid(process, 7, spacing)
    D = GM.denoiser(process, "eps")
    out = S.ddim(D, process.prior_sample((8, 2), None, F64), ts, return_trajectory=True)
    assert _lands_on_grid(out.trajectory, D, ts)


def test_grid_harness_rejects_fixed_stride():
    """The fixed-stride bug (t -> t - T//n) evaluates the model at the right times but
    lands at the wrong ones: the landing check catches it (a distribution check at few
    steps cannot separate it from DDIM's own discretisation error)."""
    process = H.DiscreteVP("linear")
    ts = time_grid(process, 7, "linspace")
    D = GM.denoiser(process, "eps")
    trajectory = []
    _ddim_fixed_stride(D, process.prior_sample((8, 2), None, F64), ts, trajectory=trajectory)
    assert not _lands_on_grid(trajectory, D, ts)


# --- bad input -----------------------------------------------------------------------------

def test_bad_input_is_refused_clearly():
    process = H.DiscreteVP("linear")
    D = GM.denoiser(process, "eps")
    ts = time_grid(process, 5)
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="valid"):
        H.sample(D, (4, 2), "ddmp")
    with pytest.raises(ValueError, match="positive integer"):
        H.sample(D, (4, 2), "ddim", steps=0)
    with pytest.raises(ValueError, match="non-finite"):
        S.ddim(D, torch.full((4, 2), float("nan"), dtype=F64), ts)
    with pytest.raises(ValueError, match="decreasing"):
        S.ddim(D, x, ts.flip(0))
    with pytest.raises(ValueError, match="leaves"):
        S.ddim(D, x, torch.tensor([1500.0, 10.0]))
    with pytest.raises(ValueError, match="eta"):
        S.ddim(D, x, ts, eta=-1)
    with pytest.raises(ValueError, match="valid"):
        S.ddpm(D, x, ts, variance="medium")
    with pytest.raises(ValueError, match="learned_variance"):
        S.ddpm(D, x, ts, variance="learned")
    with pytest.raises(ValueError, match="valid"):
        S.predictor_corrector(D, x, ts, predictor="heun")
    wrong_shape = Denoiser(lambda x, t: x[:, :1], process, "eps")
    with pytest.raises(ValueError, match="does not match"):
        S.ddim(wrong_shape, x, ts)


def test_non_finite_model_output_is_an_error():
    process = H.VPSDE()
    nan_model = Denoiser(lambda x, t: x * float("nan"), process, "eps")
    with pytest.raises(FloatingPointError, match="non-finite"):
        H.sample(nan_model, (4, 2), "ddim", 5, dtype=F64)


def test_progress_bar_keeps_the_user_callback():
    seen = []
    out = H.sample(GM.denoiser(H.VPSDE(), "eps"), (8, 2), "heun", 5, dtype=F64, progress=True,
                   callback=lambda info: seen.append(info["i"]))
    assert seen == [0, 1, 2, 3, 4] and out.nfe == 9
