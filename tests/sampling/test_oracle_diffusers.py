"""hirune against diffusers as an independent oracle.

Conventions lined up (read from diffusers' scheduling_ddim.py / scheduling_dpmsolver_multistep.py):

* Schedules: diffusers builds betas in float32 (cosine = "squaredcos_cap_v2": float64 Python
  math, then cast to float32); hirune in float64.  Betas agree to float32 rounding (rtol 1e-6).
* DDIMScheduler: `clip_sample` defaults to True there (x0 clamped to [-1, 1]) and must be
  switched off; `set_alpha_to_one=True` makes its last step the jump to the x0 estimate, as
  hirune's final jump.  `step()` steps from t to t - T // n (not to the next entry of its
  list), so whole-loop comparisons use spacings where that *is* the next entry (leading and
  trailing with n dividing T).
* DPMSolverMultistepScheduler (dpmsolver++, order 2, final_sigmas_type="zero"): the first
  step is first order, the others second order, and the last step (to sigma = 0) first order,
  i.e. x = x0_hat -- exactly hirune's dpmpp_2m with its final jump, over the same timesteps.
  `euler_at_final` and `lower_order_final` only select first order for that last step, which
  final_sigmas_type="zero" already forces, so they do not matter.  diffusers keeps its sigmas
  in float32 and casts the sample to float32 in every `step()`; the "native" comparison
  allows for that (tolerance derived below, `_native_tols`), the "aligned" one replaces the
  sigmas by hirune's float64 values and promotes that cast to float64, and then agrees to
  1e-11: the two implementations are the same algorithm over the same timesteps.
* Custom timestep lists (`set_timesteps(timesteps=[...])`) are taken as they are by the
  DPM-Solver scheduler, so non-uniform grids (step ratios r != 1) are compared too.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from optional import lazy, needs
from hirune import Denoiser, DiscreteVP, make_betas, rescale_zero_terminal_snr, time_grid
from hirune.process.mixture import demo_mixture
from hirune.sampling import ddim, dpmpp_2m
from hirune.process.schedules import cosine_betas, linear_betas, sigmoid_betas

diffusers = lazy("diffusers")
ddim_module = lazy("diffusers.schedulers.scheduling_ddim")
# numpy 2 notes from diffusers
pytestmark = [needs("diffusers"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

f64 = torch.float64

SCHEDULES = [  # (hirune name, diffusers name, diffusers kwargs)
    ("linear", "linear", {}),
    ("scaled_linear", "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    ("cosine", "squaredcos_cap_v2", {}),
    ("sigmoid", "sigmoid", {}),
]




BETA_RTOL = 1e-6  # float32 rounding (2^-24 = 6e-8) plus float32 arithmetic in sigmoid/linspace


# ----------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours,theirs,kw", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("T", [1000, 50])
def test_betas_match_ddpm_scheduler(ours, theirs, kw, T):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, **kw)
    torch.testing.assert_close(make_betas(ours, T), sched.betas.double(), rtol=BETA_RTOL, atol=1e-12)
    torch.testing.assert_close(DiscreteVP(ours, T=T).alphas_cumprod, sched.alphas_cumprod.double(),
                               rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("theirs,kw,broken", [
    ("linear", {}, lambda: linear_betas(1001)[:1000]),                    # wrong T in the linspace
    ("linear", {}, lambda: linear_betas(1000, beta_end=0.0201)),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012},
     lambda: linear_betas(1000, 0.00085, 0.012)),                       # forgot the sqrt / square
    ("squaredcos_cap_v2", {}, lambda: cosine_betas(1000, s=0.0081)),
    ("squaredcos_cap_v2", {}, lambda: cosine_betas(1001)[1:]),  # T off by one
    ("sigmoid", {}, lambda: sigmoid_betas(1000) * 1.00001),
], ids=["linear-T", "linear-end", "scaled-linear", "cosine-s", "cosine-shift", "sigmoid-scale"])
def test_beta_tolerance_rejects_broken_schedules(theirs, kw, broken):
    """Harness: the tolerance above still tells a slightly wrong schedule apart."""
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw)
    assert not torch.allclose(broken(), sched.betas.double(), rtol=BETA_RTOL, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_rescale_zero_terminal_snr_matches_diffusers(name):
    betas = make_betas(name, 1000)
    # same float64 input: the two implementations agree to rounding
    theirs = ddim_module.rescale_zero_terminal_snr(betas.clone())
    torch.testing.assert_close(rescale_zero_terminal_snr(betas), theirs, rtol=1e-12, atol=1e-15)
    assert theirs[-1] == 1 == rescale_zero_terminal_snr(betas)[-1]


def test_rescaled_scheduler_betas_match_discrete_vp():
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    rescale_betas_zero_snr=True)
    ours = DiscreteVP("scaled_linear", zero_terminal_snr=True)
    # float32 rescaling in diffusers: the last betas carry ~1e-5 absolute error
    torch.testing.assert_close(ours.betas, sched.betas.double(), rtol=1e-4, atol=1e-5)
    assert sched.alphas_cumprod[-1] == 0 and ours.alphas_cumprod[-1] == 0


# ----------------------------------------------------------------------------------------
# Timesteps
# ----------------------------------------------------------------------------------------

GRID_STEPS = [1, 2, 3, 4, 5, 7, 10, 20, 25, 50, 100, 250, 500, 999, 1000]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_set_timesteps_matches_time_grid(spacing):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    proc = DiscreteVP("linear")
    for n in GRID_STEPS:
        sched.set_timesteps(n)
        assert sched.timesteps.dtype == torch.int64
        assert sched.timesteps.double().tolist() == time_grid(proc, n, spacing).tolist(), (spacing, n)


@pytest.mark.parametrize("spacing,n", [("trailing", 48), ("trailing", 96), ("linspace", 27), ("linspace", 31)])
def test_ddim_set_timesteps_matches_time_grid_at_rounding_ties(spacing, n):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(n)
    assert sched.timesteps.double().tolist() == time_grid(DiscreteVP("linear"), n, spacing).tolist()


@pytest.mark.parametrize("n", [61, 122])
def test_trailing_where_diffusers_overshoots(n):
    """For some n, np.arange(T, 0, -T/n) has n + 1 entries and diffusers' trailing list ends
    with the invalid timestep -1 (a diffusers bug).  hirune gives the n valid ones."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    sched.set_timesteps(n)
    ours = time_grid(DiscreteVP("linear"), n, "trailing")
    assert len(sched.timesteps) == n + 1 and sched.timesteps[-1] == -1
    assert sched.timesteps[:n].double().tolist() == ours.tolist()


def test_dpm_solver_trailing_timesteps_match_time_grid():
    sched = diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing")
    proc = DiscreteVP("linear")
    for n in GRID_STEPS:
        sched.set_timesteps(n)
        assert sched.timesteps.double().tolist() == time_grid(proc, n, "trailing").tolist(), n


# ----------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------

PRED_TYPES = [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")]


def _ddim_scheduler(proc: DiscreteVP, schedule: str, n: int, spacing: str = "leading",
                    float64: bool = False, **extra) -> "diffusers.DDIMScheduler":
    theirs, kw = {s[0]: (s[1], s[2]) for s in SCHEDULES}[schedule]
    sched = diffusers.DDIMScheduler(num_train_timesteps=proc.T, beta_schedule=theirs, clip_sample=False,
                                    set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing, **kw, **extra)
    if float64:  # hirune's float64 schedule in place of diffusers' float32 one
        sched.alphas_cumprod = proc.alphas_cumprod.clone()
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=f64)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("pred,their_pred", PRED_TYPES, ids=[p[0] for p in PRED_TYPES])
@pytest.mark.parametrize("float64", [True, False], ids=["f64-schedule", "native"])
@pytest.mark.parametrize("t,prev", [(999, 979), (500, 480), (20, 0), (15, None)])
def test_one_ddim_step(pred, their_pred, float64, t, prev):
    """The same model output and sample, one DDIM step (eta = 0): diffusers' prev_sample ==
    trajectory[1] of hirune's ddim over the grid [t, prev] (or [t]: the final jump)."""
    proc = DiscreteVP("linear")
    # step() strides T // 50 = 20
    sched = _ddim_scheduler(proc, "linear", 50, float64=float64, prediction_type=their_pred)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(4, 3, generator=g, dtype=f64)
    out = torch.randn(4, 3, generator=g, dtype=f64)
    den = Denoiser(lambda x_, t_: out, proc, pred)
    grid = torch.tensor([float(t)] if prev is None else [float(t), float(prev)], dtype=f64)
    ours = ddim(den, x, grid, return_trajectory=True).trajectory[1]
    theirs = sched.step(out, t, x, eta=0.0).prev_sample
    assert theirs.dtype == f64
    # float32 alphas_cumprod: relative error ~1e-7 of alpha_bar, amplified by 1/sqrt(alpha_bar)
    tol = 1e-12 if float64 else 2e-5
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


def _mixture_setup(schedule: str, n_samples: int = 256):
    proc = DiscreteVP(schedule)
    model = demo_mixture().model(proc, "eps")
    x = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    return proc, model, Denoiser(model, proc, "eps"), x


def _eps(model, x, t) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), float(t), dtype=f64))


def _diffusers_ddim_loop(sched, model, x):
    for t in sched.timesteps:
        x = sched.step(_eps(model, x, t), int(t), x, eta=0.0).prev_sample
    return x


def _ddim_wrong_target(den, x, ts, offset: int):
    """Broken DDIM: the model is evaluated at the right times but each step lands `offset`
    steps off its target (the classic off-by-one in prev_timestep)."""
    ts = ts.tolist()
    for t, s in zip(ts, ts[1:]):
        pred = den(x, t)
        c = den.process.coefficients(s - offset, x)
        x = c.alpha * pred.x0 + c.sigma * pred.eps
    return den(x, ts[-1]).x0


# Native diffusers runs carry its float32 schedule.  The first step recovers
# x0 = (x - sigma eps) / alpha, a difference of two O(1) numbers divided by alpha(t_first):
# an absolute float32 error ~2^-24 in sigma becomes ~2^-24 / alpha(t_first) in x0 (the
# "floor").  That is 9e-6 for the linear schedule from t = 999 (alpha = 6.4e-3) but 1.2e-3
# for cosine from t = 999 (alpha = 4.9e-5: its last beta is clipped at 0.999).  Tolerances:
# RMS over the 256 samples < 4 floors, max < 40 floors (a few samples sit near the mixture's
# decision boundaries, where errors grow).  Measured: RMS <= 1.6 floors, max <= 11 floors;
# the broken variants below are >= 31 floors away (RMS).  The float64-aligned runs are the
# sharp check (1e-11).


def _native_tols(proc, ts) -> tuple[float, float]:
    floor = 2.0**-24 / float(proc.alpha(ts[0]))
    return 4 * floor, 40 * floor


def _rms(a: torch.Tensor) -> float:
    return float(a.pow(2).mean().sqrt())


def _assert_native_close(ours, native, proc, ts):
    rms_tol, max_tol = _native_tols(proc, ts)
    err_rms, err_max = _rms(ours - native), float((ours - native).abs().max())
    assert err_rms < rms_tol and err_max < max_tol, (err_rms, rms_tol, err_max, max_tol)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_10_steps_on_exact_mixture(schedule, spacing):
    proc, model, den, x = _mixture_setup(schedule)
    sched = _ddim_scheduler(proc, schedule, 10, spacing)
    ts = sched.timesteps.double()
    assert ts.tolist() == time_grid(proc, 10, spacing).tolist()
    ours = ddim(den, x, ts)
    assert ours.nfe == 10

    exact = _diffusers_ddim_loop(_ddim_scheduler(proc, schedule, 10, spacing, float64=True), model, x)
    torch.testing.assert_close(ours.x, exact, rtol=1e-11, atol=1e-11)

    native = _diffusers_ddim_loop(sched, model, x)
    _assert_native_close(ours.x, native, proc, ts)
    # harness: a DDIM whose steps land one timestep off is far outside that tolerance
    for offset in (1, -1):
        wrong = _ddim_wrong_target(den, x, ts, offset)
        assert _rms(wrong - native) > 5 * _native_tols(proc, ts)[0], offset
        with pytest.raises(AssertionError):
            torch.testing.assert_close(wrong, exact, rtol=1e-11, atol=1e-11)
    assert (_ddim_wrong_target(den, x, ts, 0) - ours.x).abs().max() < 1e-12  # the copy itself is right


@pytest.mark.parametrize("n", [10, 25])
def test_ddim_zero_terminal_snr_v_prediction(n):
    """Lin et al. 2023's recipe: rescaled betas, v-prediction, trailing spacing, so the first
    step starts at pure noise (alpha = 0).  No 1/alpha anywhere, so the native float32 run
    is close too (measured RMS 1.4e-6, max 2.1e-5; one-step-off targets: RMS >= 3e-2)."""
    proc = DiscreteVP("scaled_linear", zero_terminal_snr=True)
    model = demo_mixture().model(proc, "v")
    den = Denoiser(model, proc, "v")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=f64)

    def scheduler(float64):
        sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                        timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
        if float64:
            sched.alphas_cumprod = proc.alphas_cumprod.clone()
            sched.final_alpha_cumprod = torch.tensor(1.0, dtype=f64)
        sched.set_timesteps(n)
        return sched

    native_sched = scheduler(False)
    ts = native_sched.timesteps.double()
    assert ts.tolist() == time_grid(proc, n, "trailing").tolist() and ts[0] == 999
    assert float(proc.alpha(ts[0])) == 0.0
    ours = ddim(den, x, ts).x
    torch.testing.assert_close(ours, _diffusers_ddim_loop(scheduler(True), model, x), rtol=1e-11, atol=1e-11)
    native = _diffusers_ddim_loop(native_sched, model, x)
    assert _rms(ours - native) < 1e-5 and float((ours - native).abs().max()) < 1e-4
    assert _rms(_ddim_wrong_target(den, x, ts, 1) - native) > 1e-3


# ----------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# ----------------------------------------------------------------------------------------


class _Float64Torch:
    """`torch` as seen from diffusers' DPM-Solver module, with torch.float32 -> float64, so that
    `step()`'s `sample.to(torch.float32)` keeps float64.  Everything else is plain torch."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def _dpm_scheduler(proc: DiscreteVP, schedule: str, *, n: int | None = None,
                   timesteps: list[int] | None = None, float64: bool = False):
    theirs, kw = {s[0]: (s[1], s[2]) for s in SCHEDULES}[schedule]
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=proc.T, beta_schedule=theirs, algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", timestep_spacing="trailing",
        final_sigmas_type="zero", lower_order_final=True, euler_at_final=False,
        use_karras_sigmas=False, **kw)
    if timesteps is None:
        sched.set_timesteps(n)
    else:
        sched.set_timesteps(timesteps=timesteps)
    if float64:  # hirune's float64 noise levels sigma/alpha at the same timesteps, then 0
        sig = proc.edm_sigma(sched.timesteps.double())
        sched.sigmas = torch.cat([sig, torch.zeros(1, dtype=f64)])
    return sched


def _diffusers_dpm_loop(sched, model, x):
    for t in sched.timesteps:
        x = sched.step(_eps(model, x, t), t, x).prev_sample
    return x


def _dpmpp_2m_without_half(den, x, ts):
    """Broken DPM-Solver++(2M): D = x0 + (x0 - x0_prev) / r, the factor 1/2 of the
    second-order correction dropped."""
    proc, ts = den.process, ts.tolist()
    x0_prev, h_prev = None, None
    for t, s in zip(ts, ts[1:]):
        pred = den(x, t)
        ct, cs = pred.coeffs, proc.coefficients(s, x)
        h = float(proc.log_snr(s) - proc.log_snr(t)) / 2
        d = pred.x0 if x0_prev is None else pred.x0 + (pred.x0 - x0_prev) * h / h_prev
        x = cs.sigma / ct.sigma * x - cs.alpha * (math.exp(-h) - 1) * d
        x0_prev, h_prev = pred.x0, h
    return den(x, ts[-1]).x0


DPM_GRIDS = [  # (id, n, custom timesteps)
    ("trailing5", 5, None), ("trailing10", 10, None), ("trailing25", 25, None),
    ("custom", None, [999, 850, 600, 420, 250, 120, 50, 12]),
]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("gid,n,custom", DPM_GRIDS, ids=[g[0] for g in DPM_GRIDS])
def test_dpmpp_2m_matches_dpm_solver_multistep(schedule, gid, n, custom, monkeypatch):
    proc, model, den, x = _mixture_setup(schedule)
    sched = _dpm_scheduler(proc, schedule, n=n, timesteps=custom)
    ts = sched.timesteps.double()
    if custom is None:
        assert ts.tolist() == time_grid(proc, n, "trailing").tolist()
    ours = dpmpp_2m(den, x, ts)
    assert ours.nfe == len(ts)

    native = _diffusers_dpm_loop(sched, model, x)
    _assert_native_close(ours.x, native, proc, ts)

    # a first-order solver (DDIM) and a wrong second-order correction are far outside it
    rms_tol = _native_tols(proc, ts)[0]
    assert _rms(ddim(den, x, ts).x - native) > 5 * rms_tol
    assert _rms(_dpmpp_2m_without_half(den, x, ts) - native) > 5 * rms_tol

    with monkeypatch.context() as m:
        m.setattr(importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_multistep"), "torch",
                  _Float64Torch())
        aligned = _diffusers_dpm_loop(_dpm_scheduler(proc, schedule, n=n, timesteps=custom, float64=True),
                                      model, x)
    assert aligned.dtype == f64
    torch.testing.assert_close(ours.x, aligned, rtol=1e-11, atol=1e-11)
