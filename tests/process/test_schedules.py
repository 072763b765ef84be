"""Discrete forward processes (hirune.process.schedules) against their published formulas.

Discrete schedules: DDPM (Ho et al. 2020), Improved DDPM cosine (Nichol & Dhariwal 2021,
eq. 17), latent-diffusion scaled_linear, GeoDiff sigmoid, zero-terminal-SNR rescaling
(Lin et al. 2023, Alg. 1), DiscreteVP's DDPM posterior (eq. 6-7) and hirune's continuous
extension, and the schedules' bad inputs.

Everything is float64.  Several tests carry a "harness" twin that runs the same check on a
deliberately wrong formula and asserts that the check rejects it, so a tolerance that is
too loose to catch the typical mistake shows up as a failure.
"""

from __future__ import annotations

import math

import pytest
import torch

from hirune import BETA_SCHEDULES, DiscreteVP, make_betas, rescale_zero_terminal_snr
from hirune.process.schedules import cosine_betas, linear_betas, scaled_linear_betas, sigmoid_betas

f64 = torch.float64


# ----------------------------------------------------------------------------------------
# Discrete beta schedules
# ----------------------------------------------------------------------------------------

# prod_{i<1000} (1 - beta_i) for DDPM's linear betas, evaluated independently below with
# math.fsum of log1p terms: 4.0358297653756...e-05 (the often quoted "4.04e-5").
DDPM_LINEAR_ALPHABAR_T = 4.04e-5


def _ddpm_linear_alphabar_reference(T=1000, b0=1e-4, b1=0.02) -> list[float]:
    """Cumulative products computed in plain Python, independent of torch.linspace/cumprod."""
    betas = [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
    logs, out = [], []
    for b in betas:
        logs.append(math.log1p(-b))
        out.append(math.exp(math.fsum(logs)))
    return out


def test_ddpm_linear_betas_and_terminal_alphabar():
    betas = linear_betas(1000)
    assert betas.dtype == f64 and betas.shape == (1000,)
    ref_betas = torch.tensor([1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)], dtype=f64)
    torch.testing.assert_close(betas, ref_betas, rtol=1e-14, atol=1e-17)
    assert betas[0] == 1e-4 and abs(float(betas[-1]) - 0.02) < 1e-17

    proc = DiscreteVP("linear")
    ref = _ddpm_linear_alphabar_reference()
    torch.testing.assert_close(proc.alphas_cumprod, torch.tensor(ref, dtype=f64), rtol=1e-11, atol=0)
    last = float(proc.alphas_cumprod[-1])
    assert abs(last - 4.0358297653756e-05) < 1e-15
    # the published value to ~1%: the true value 4.0358e-5 is 0.1% away from 4.04e-5
    assert abs(last / DDPM_LINEAR_ALPHABAR_T - 1) < 0.01


def test_ddpm_terminal_check_rejects_off_by_one_step():
    """Harness: the 1% check on alphas_cumprod[-1] is tight enough to catch a schedule
    that is one noising step short (alphas_cumprod[-2] is 2% larger)."""
    proc = DiscreteVP("linear")
    assert abs(float(proc.alphas_cumprod[-2]) / DDPM_LINEAR_ALPHABAR_T - 1) > 0.01
    assert abs(float(torch.cumprod(1 - linear_betas(1001), 0)[-1]) / DDPM_LINEAR_ALPHABAR_T - 1) > 0.01


def _cosine_f(t: float, T: int, s: float = 0.008) -> float:
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("T", [10, 100, 1000, 4000])
def test_cosine_schedule_matches_improved_ddpm_eq17(T):
    betas = cosine_betas(T)
    proc = DiscreteVP("cosine", T=T)
    torch.testing.assert_close(proc.betas, betas, rtol=0, atol=0)
    assert (betas > 0).all() and (betas <= 0.999).all()

    clipped = betas >= 0.999
    n_clip = int(clipped.sum())
    assert n_clip >= 1, "the singular last step must be clipped"
    assert clipped[T - n_clip:].all() and not clipped[: T - n_clip].any(), "only the last betas clip"
    assert (betas[clipped] == 0.999).all(), "clipped exactly at max_beta"

    f0 = _cosine_f(0, T)
    # unclipped betas: beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)
    # (1 - ratio cancels: absolute error ~1e-16 is all float64 can give)
    expected = torch.tensor([1 - _cosine_f(t + 1, T) / _cosine_f(t, T) for t in range(T - n_clip)], dtype=f64)
    torch.testing.assert_close(betas[: T - n_clip], expected, rtol=1e-12, atol=1e-15)
    # alphas_cumprod[t] (after t+1 steps) = f(t+1)/f(0) wherever no beta up to t clipped
    ref = torch.tensor([_cosine_f(t + 1, T) / f0 for t in range(T - n_clip)], dtype=f64)
    torch.testing.assert_close(proc.alphas_cumprod[: T - n_clip], ref, rtol=1e-11, atol=1e-15)
    # harness: the same comparison one step off (alpha_bar at t instead of t+1) is rejected
    ref_off = torch.tensor([_cosine_f(t, T) / f0 for t in range(T - n_clip)], dtype=f64)
    assert not torch.allclose(proc.alphas_cumprod[: T - n_clip], ref_off, rtol=1e-6, atol=1e-9)


def test_cosine_custom_max_beta_clips_there():
    betas = cosine_betas(1000, max_beta=0.5)
    assert betas.max() == 0.5
    assert (betas[betas < 0.5] == cosine_betas(1000)[betas < 0.5]).all()


def test_scaled_linear_endpoints_and_sqrt_linearity():
    betas = scaled_linear_betas(1000)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([0.00085, 0.012], dtype=f64), rtol=1e-13, atol=0)
    r = betas.sqrt()
    torch.testing.assert_close(r.diff(), torch.full((999,), float(r[1] - r[0]), dtype=f64), rtol=1e-9, atol=0)
    assert (betas.diff() > 0).all()
    # not merely linear in beta: the midpoint is below the linear interpolation
    assert betas[500] < (0.00085 + 0.012) / 2


@pytest.mark.parametrize("T", [10, 1000])
def test_sigmoid_endpoints_monotone_symmetric(T):
    b0, b1 = 1e-4, 0.02
    betas = sigmoid_betas(T)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert abs(float(betas[0]) - (b0 + (b1 - b0) * sig(-6))) < 1e-16
    assert abs(float(betas[-1]) - (b0 + (b1 - b0) * sig(6))) < 1e-16
    assert (betas.diff() > 0).all()
    assert (betas > b0).all() and (betas < b1).all()
    # sigmoid(-x) = 1 - sigmoid(x) on a symmetric grid
    torch.testing.assert_close(betas + betas.flip(0), torch.full((T,), b0 + b1, dtype=f64), rtol=1e-14, atol=0)


def test_make_betas_dispatches_every_schedule():
    assert set(BETA_SCHEDULES) == {"linear", "cosine", "scaled_linear", "sigmoid"}
    for name, fn in BETA_SCHEDULES.items():
        assert torch.equal(make_betas(name, 50), fn(50))
        assert torch.equal(DiscreteVP(name, T=50).betas, fn(50))


# ----------------------------------------------------------------------------------------
# Zero terminal SNR (Lin et al. 2023, Alg. 1)
# ----------------------------------------------------------------------------------------


def _affine_fit_residual(new: torch.Tensor, old: torch.Tensor) -> float:
    """Max residual of the least-squares affine fit new ~ a * old + b."""
    A = torch.stack([old, torch.ones_like(old)], 1)
    coef = torch.linalg.lstsq(A, new[:, None]).solution
    return float((A @ coef - new[:, None]).abs().max())


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_rescale_zero_terminal_snr(name):
    old = make_betas(name, 1000)
    new = rescale_zero_terminal_snr(old)
    assert new.dtype == f64
    ab_old, ab_new = torch.cumprod(1 - old, 0), torch.cumprod(1 - new, 0)
    assert ab_new[-1] == 0 and new[-1] == 1, "exactly zero SNR at the last step"
    assert abs(float(ab_new[0] - ab_old[0])) <= 1e-15, "first step unchanged"
    assert ((new > 0) & (new <= 1)).all()
    # sqrt(alpha_bar) is an affine map of the original: through (first, first) and (last, 0)
    s_old, s_new = ab_old.sqrt(), ab_new.sqrt()
    a = s_old[0] / (s_old[0] - s_old[-1])
    torch.testing.assert_close(s_new, a * (s_old - s_old[-1]), rtol=1e-10, atol=1e-13)
    assert _affine_fit_residual(s_new, s_old) < 1e-12
    # consistent through DiscreteVP
    proc = DiscreteVP(name, zero_terminal_snr=True)
    assert proc.zero_terminal_snr and not DiscreteVP(name).zero_terminal_snr
    torch.testing.assert_close(proc.betas, new, rtol=0, atol=0)
    assert float(proc.alpha(999)) == 0.0 and float(proc.sigma(999)) == 1.0


def test_affine_check_rejects_rescaling_alphabar_instead_of_its_sqrt():
    """Harness: shifting/scaling alpha_bar itself (forgetting the sqrt of Alg. 1) also gives
    zero terminal SNR and an unchanged first step, but the affine-in-sqrt check catches it."""
    old = make_betas("scaled_linear", 1000)
    ab_old = torch.cumprod(1 - old, 0)
    ab_bad = (ab_old - ab_old[-1]) * ab_old[0] / (ab_old[0] - ab_old[-1])
    assert ab_bad[-1] == 0 and abs(float(ab_bad[0] - ab_old[0])) < 1e-15
    assert _affine_fit_residual(ab_bad.sqrt(), ab_old.sqrt()) > 1e-3


# ----------------------------------------------------------------------------------------
# DiscreteVP: posterior (DDPM eq. 6-7) and the continuous extension
# ----------------------------------------------------------------------------------------


def _ddpm_eq7(betas: torch.Tensor, x0, xt, t: int):
    """DDPM eq. 7 written out from the betas alone."""
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = ab[t - 1] if t >= 1 else torch.tensor(1.0, dtype=f64)
    mean = (ab_prev.sqrt() * betas[t] / (1 - ab[t])) * x0 + ((1 - betas[t]).sqrt() * (1 - ab_prev) / (1 - ab[t])) * xt
    return mean, betas[t] * (1 - ab_prev) / (1 - ab[t])


@pytest.mark.parametrize("proc", [DiscreteVP("linear"), DiscreteVP("cosine"),
                                  DiscreteVP("scaled_linear", zero_terminal_snr=True)], ids=repr)
def test_q_posterior_matches_generic_posterior_and_eq7(proc):
    g = torch.Generator().manual_seed(1)
    ts = [0, 1, 2, 17, 500, 998, 999]
    x0 = torch.randn(len(ts), 3, generator=g, dtype=f64)
    xt = torch.randn(len(ts), 3, generator=g, dtype=f64)
    t_vec = torch.tensor(ts)
    mean, var = proc.q_posterior_mean_variance(x0, xt, t_vec)
    for i, t in enumerate(ts):
        m_gen, v_small, v_large = proc.posterior(x0[i:i + 1], xt[i:i + 1], float(t), float(t - 1))
        torch.testing.assert_close(mean[i:i + 1], m_gen, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var[i].expand(1, 1), v_small.reshape(1, 1), rtol=1e-10, atol=1e-15)
        if t >= 1:  # "large" variance = beta_t (beta_0 would be the jump to the data, variance 0)
            torch.testing.assert_close(v_large.reshape(()), proc.betas[t], rtol=1e-10, atol=1e-15)
        m_ref, v_ref = _ddpm_eq7(proc.betas, x0[i], xt[i], t)
        torch.testing.assert_close(mean[i], m_ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(var[i].reshape(()), v_ref, rtol=1e-12, atol=1e-16)
        torch.testing.assert_close(proc.posterior_variance[t], v_ref, rtol=1e-12, atol=1e-16)
    # t = 0: q(x_{-1} | x_0, x_0) is the data itself
    torch.testing.assert_close(mean[0], x0[0], rtol=0, atol=1e-11)  # 1 - alpha_bar_0 cancels
    assert var[0] == 0
    # the generic posterior also takes a whole batch of times at once
    m_b, v_b, _ = proc.posterior(x0, xt, t_vec.double(), t_vec.double() - 1)
    torch.testing.assert_close(m_b, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_b.reshape(-1), var.reshape(-1), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("proc", [DiscreteVP("linear"), DiscreteVP("cosine", T=200),
                                  DiscreteVP("linear", zero_terminal_snr=True)], ids=repr)
def test_discrete_vp_continuous_extension(proc):
    T = proc.T
    ints = torch.arange(T, dtype=f64)
    torch.testing.assert_close(proc.alpha(ints), proc.alphas_cumprod.sqrt(), rtol=0, atol=1e-15)
    assert float(proc.alpha(-1)) == 1.0 and float(proc.sigma(-1)) == 0.0
    assert (proc.t_min, proc.t_max) == (0.0, float(T - 1))
    fr = torch.tensor([0.25, 3.5, 7.125, T / 2 + 0.3, T - 1.6, T - 1.01], dtype=f64)
    # linear interpolation of alpha between the integer nodes
    lo = fr.floor()
    expected = proc.alpha(lo) + (fr - lo) * (proc.alpha(lo + 1) - proc.alpha(lo))
    torch.testing.assert_close(proc.alpha(fr), expected, rtol=1e-14, atol=1e-15)
    # alpha^2 + sigma^2 == 1 everywhere, integer or not
    all_t = torch.cat([ints, fr, torch.linspace(-1, T - 1, 3001, dtype=f64)])
    torch.testing.assert_close(proc.alpha(all_t) ** 2 + proc.sigma(all_t) ** 2,
                               torch.ones_like(all_t), rtol=0, atol=1e-14)
    # derivatives: central differences inside a segment
    h = 1e-4
    for name, d in (("alpha", "dalpha"), ("sigma", "dsigma")):
        f = getattr(proc, name)
        fd = (f(fr + h) - f(fr - h)) / (2 * h)
        torch.testing.assert_close(getattr(proc, d)(fr), fd, rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


def test_unknown_schedule_lists_valid_names():
    for make in (lambda: make_betas("cosine_v3"), lambda: DiscreteVP("cosine_v3")):
        with pytest.raises(ValueError) as e:
            make()
        assert "cosine_v3" in str(e.value)
        for name in BETA_SCHEDULES:
            assert repr(name) in str(e.value)


@pytest.mark.parametrize("T", [1, 0, -5, 2.5, "1000", True])
def test_bad_number_of_steps(T):
    with pytest.raises(ValueError, match="T"):
        make_betas("linear", T)
    with pytest.raises(ValueError):
        DiscreteVP("linear", T=T)


def test_two_steps_is_enough():
    assert DiscreteVP("cosine", T=2).T == 2


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, -0.2], [0.5, 1.2], [0.1, float("nan")],
                                   [[0.1, 0.2], [0.1, 0.2]]])
def test_invalid_betas(betas):
    with pytest.raises(ValueError, match="betas"):
        DiscreteVP(betas=torch.tensor(betas, dtype=f64))


def test_explicit_betas_accepted():
    p = DiscreteVP(betas=[0.1, 0.5, 1.0])
    assert p.schedule == "custom" and p.T == 3 and p.zero_terminal_snr


# --- the SNR shift (SD3 sec. 5.3.2, as CogVideoX applies it to a discrete schedule) -----------------------------

@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_snr_shift_divides_every_snr(shift):
    plain, shifted = DiscreteVP("scaled_linear"), DiscreteVP("scaled_linear", snr_shift=shift)
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    torch.testing.assert_close(snr(shifted.alphas_cumprod), snr(plain.alphas_cumprod) / shift, rtol=1e-10, atol=0)


def _shifted_then_rescaled_alphabar(shift: float, rescale_first: bool = False):
    betas = make_betas("scaled_linear", 1000)
    if rescale_first:  # the broken order: rescaled to zero terminal SNR, then shifted (the end stays 0 either way)
        ab = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
        return ab / (shift + (1 - shift) * ab)
    return DiscreteVP("scaled_linear", zero_terminal_snr=True, snr_shift=shift).alphas_cumprod


@pytest.mark.parametrize("broken", [False, True], ids=["hirune", "rescaled-before-shift"])
def test_snr_shift_matches_cogvideox_scheduler(broken):
    """diffusers' CogVideoXDDIMScheduler (scaled_linear 0.00085..0.012, SNR shift 3, zero terminal SNR) is the
    oracle; applying the rescale before the shift gives another schedule, which the same check rejects."""
    diffusers = pytest.importorskip("diffusers")
    oracle = diffusers.CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                              snr_shift_scale=3.0, rescale_betas_zero_snr=True).alphas_cumprod
    ours = _shifted_then_rescaled_alphabar(3.0, rescale_first=broken)
    close = torch.allclose(ours.float(), oracle.float(), rtol=1e-5, atol=1e-6)
    assert close != broken


def test_snr_shift_must_be_positive():
    with pytest.raises(ValueError, match="snr_shift=0.0 is not valid; valid: a number > 0"):
        DiscreteVP("linear", snr_shift=0.0)
