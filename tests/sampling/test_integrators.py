"""Tests of hirune.sampling.integrators: adaptive Dormand-Prince RK45 and fixed Euler/midpoint/Heun steps.

Oracles: closed-form solutions of linear ODEs (decay, harmonic oscillator, a non-autonomous
equation), scipy's solve_ivp(method="RK45") and the classical Runge-Kutta order conditions.
Every check is also run against a deliberately broken variant (wrong Butcher coefficient,
wrong stage time, first-order step in place of a second-order one) to show it can fail.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import hirune.sampling.integrators as integrators
from hirune.sampling.integrators import FIXED_STEPS, euler_step, heun_step, midpoint_step, rk45

F64 = torch.float64




# --- problems with closed-form solutions ------------------------------------------------


class Decay:
    """dy/dt = -k y, one rate per row:  y(t) = y(t0) exp(-k (t - t0))."""

    def __init__(self, k=(0.5, 1.0, 3.0)):
        self.k = torch.tensor(k, dtype=F64)[:, None]
        self.y0 = torch.linspace(0.5, 2.0, len(k), dtype=F64)[:, None]

    def f(self, t, y):
        return -self.k * y

    def exact(self, t, t0, y0):
        return y0 * torch.exp(-self.k * (t - t0))


class Oscillator:
    """q' = w p, p' = -w q (a harmonic oscillator in units where both have amplitude ~1),
    one frequency per row: a rotation of (q, p) by the angle w (t - t0)."""

    def __init__(self, w=(0.5, 1.0, 2.0)):
        self.w = torch.tensor(w, dtype=F64)
        n = len(w)
        self.y0 = torch.stack([torch.cos(torch.arange(n, dtype=F64)),
                               torch.sin(torch.arange(n, dtype=F64))], 1)

    def f(self, t, y):
        return self.w[:, None] * torch.stack([y[:, 1], -y[:, 0]], 1)

    def exact(self, t, t0, y0):
        a = self.w * (t - t0)
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([c * y0[:, 0] + s * y0[:, 1], -s * y0[:, 0] + c * y0[:, 1]], 1)


class TimeDependent:
    """dy/dt = (cos t - t / 2) y:  y(t) = y(t0) exp(sin t - sin t0 - (t^2 - t0^2) / 4).
    Non-autonomous, so a step that evaluates f at the wrong time fails it."""

    def __init__(self):
        self.y0 = torch.tensor([[1.0], [-0.5]], dtype=F64)

    def f(self, t, y):
        return (math.cos(t) - t / 2) * y

    def exact(self, t, t0, y0):
        return y0 * math.exp(math.sin(t) - math.sin(t0) - (t * t - t0 * t0) / 4)


class CosGrowth(TimeDependent):
    """dy/dt = cos(t) y:  y(t) = y(t0) exp(sin t - sin t0); its error constants are clean
    over [0, 1], so halving the step shows the asymptotic order already at 32 steps."""

    def f(self, t, y):
        return math.cos(t) * y

    def exact(self, t, t0, y0):
        return y0 * math.exp(math.sin(t) - math.sin(t0))


class Growth(TimeDependent):
    """dy/dt = (1 + t) y:  y(t) = y(t0) exp(t - t0 + (t^2 - t0^2) / 2)."""

    def f(self, t, y):
        return (1 + t) * y

    def exact(self, t, t0, y0):
        return y0 * math.exp(t - t0 + (t * t - t0 * t0) / 2)


# name: (problem, span, atol as a fraction of rtol).  The scalar linear problems decay by up
# to e^-4 over the span, so integrated backwards an absolute-error floor would be amplified
# by e^4 (the backward problem is unstable); they are run under relative control instead.
PROBLEMS = {"decay": (Decay, 2.0, 1e-3), "oscillator": (Oscillator, 2 * math.pi, 1.0),
            "time_dependent": (TimeDependent, 4.0, 1e-3)}


def rk45_error_in_tols(problem, t0, t1, rtol, atol):
    """Max error of rk45 from t0 to t1, in units of the tolerance atol + rtol |y|."""
    y0 = problem.exact(t0, 0.0, problem.y0)
    y, nfe = rk45(problem.f, y0, t0, t1, rtol=rtol, atol=atol)
    ref = problem.exact(t1, 0.0, problem.y0)
    return float(((y - ref).abs() / (atol + rtol * ref.abs())).max()), nfe


# --- rk45 against closed forms ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("tol", [1e-6, 1e-9])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_rk45_matches_closed_form(name, tol, direction):
    cls, T, atol_frac = PROBLEMS[name]
    t0, t1 = (0.0, T) if direction == "forward" else (T, 0.0)
    err, nfe = rk45_error_in_tols(cls(), t0, t1, tol, atol_frac * tol)
    # Local error control gives a global error of a few tolerances over these spans
    # (measured: <= ~6 tolerances; scipy's RK45 does the same, see the next test).
    assert err < 10, f"{name} {direction} tol={tol}: error {err:.2f} x tol (nfe {nfe})"
    assert 7 <= nfe < 2000


def test_rk45_zero_span_is_identity():
    y0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    y, nfe = rk45(lambda t, y: y, y0, 0.3, 0.3)
    assert torch.equal(y, y0) and nfe == 1


def test_rk45_backward_inverts_forward():
    p = Oscillator()
    y1, _ = rk45(p.f, p.y0, 0.0, 3.0, rtol=1e-10, atol=1e-10)
    y0, _ = rk45(p.f, y1, 3.0, 0.0, rtol=1e-10, atol=1e-10)
    assert (y0 - p.y0).abs().max() < 1e-8


# --- rk45 against scipy ---------------------------------------------------------------


@pytest.mark.parametrize("tol", [1e-5, 1e-8])
@pytest.mark.parametrize("w", [1.0, 3.0])
def test_rk45_agrees_with_scipy(tol, w, record_property):
    scipy_integrate = pytest.importorskip("scipy.integrate")
    # One sample (B = 1): the per-sample RMS error norm is then exactly scipy's norm.
    p = Oscillator(w=(w,))
    y0 = torch.tensor([[1.0, 0.2]], dtype=F64)
    T = 6.0
    y, nfe = rk45(p.f, y0, 0.0, T, rtol=tol, atol=tol)
    sol = scipy_integrate.solve_ivp(
        lambda t, v: w * torch.tensor([v[1], -v[0]]).numpy(), (0.0, T), y0[0].numpy(),
        method="RK45", rtol=tol, atol=tol)
    assert sol.success
    ys = torch.from_numpy(sol.y[:, -1])
    exact = p.exact(T, 0.0, y0)[0]
    ours_err = float((y[0] - exact).abs().max())
    scipy_err = float((ys - exact).abs().max())
    record_property("nfe_hirune", nfe)
    record_property("nfe_scipy", sol.nfev)
    # Same method, same error norm, same tolerance: the same answer to within the tolerance
    # and a comparable global error and cost (measured: nfe within 2%, answers within 0.2 tol).
    assert float((y[0] - ys).abs().max()) < 2 * tol
    assert ours_err < 2 * scipy_err + tol
    assert 0.67 < nfe / sol.nfev < 1.5, f"nfe hirune {nfe} vs scipy {sol.nfev}"


# --- per-sample error control -----------------------------------------------------------


def test_rk45_error_norm_is_per_sample_worst_case():
    """One fast oscillator among many slow ones: a batch-wide RMS would dilute its error by
    sqrt(batch) and take steps that are too long for it.  With the per-sample norm the
    worst (fast) row sets every step, so it is integrated exactly as if it were alone."""
    tol, T = 1e-6, 1.0
    fast = Oscillator(w=(40.0,))
    batch = Oscillator(w=(40.0,) + (0.3,) * 63)
    y0 = torch.cat([fast.y0, torch.tensor([[1.0, 0.0]], dtype=F64).expand(63, 2)])
    y_alone, nfe_alone = rk45(fast.f, fast.y0, 0.0, T, rtol=tol, atol=tol)
    y_batch, nfe_batch = rk45(batch.f, y0, 0.0, T, rtol=tol, atol=tol)
    assert nfe_batch == nfe_alone
    assert torch.allclose(y_batch[:1], y_alone, rtol=0, atol=1e-13)
    err_fast = float((y_batch[0] - fast.exact(T, 0.0, fast.y0)[0]).abs().max())
    # measured: 17 tol (6 periods at w = 40); a batch-wide RMS norm takes 577 instead of 883
    # evaluations and ends 156 tol off
    assert err_fast < 40 * tol, f"fast row error {err_fast:.2e}"
    err_slow = float((y_batch[1:] - batch.exact(T, 0.0, y0)[1:]).abs().max())
    assert err_slow < tol


def test_rk45_fast_row_in_batch_matches_closed_form():
    """The same from the other side: a stiff-ish decaying row (k = 200) next to slow rows."""
    tol = 1e-7
    p = Decay(k=(200.0,) + (0.1,) * 15)
    y, _ = rk45(p.f, p.y0, 0.0, 0.05, rtol=tol, atol=tol)
    ref = p.exact(0.05, 0.0, p.y0)
    assert float(((y - ref).abs() / (tol + tol * ref.abs())).max()) < 10


# --- rk45 failure modes ------------------------------------------------------------------


def test_rk45_raises_when_max_steps_too_small():
    p = Oscillator()
    with pytest.raises(RuntimeError, match="did not reach"):
        rk45(p.f, p.y0, 0.0, 10.0, rtol=1e-9, atol=1e-9, max_steps=5)
    # and the same problem with enough steps goes through
    rk45(p.f, p.y0, 0.0, 10.0, rtol=1e-9, atol=1e-9, max_steps=10_000)


@pytest.mark.parametrize("where", ["everywhere", "after_half"])
def test_rk45_fails_fast_on_non_finite_derivative(where):
    calls = 0

    def f(t, y):
        nonlocal calls
        calls += 1
        return y * (float("nan") if where == "everywhere" or t > 0.5 else 1.0)

    with pytest.raises((FloatingPointError, RuntimeError, ValueError), match="finite"):
        rk45(f, torch.ones(2, 2, dtype=F64), 0.0, 1.0, max_steps=1000)
    assert calls < 2000  # max_steps = 1000 steps would be 6001 calls


# --- the Dormand-Prince tableau -----------------------------------------------------------


def _order_conditions(b, A, c):
    """Residuals of the 8 Runge-Kutta order conditions up to order 4 (Butcher trees)."""
    s = len(b)
    Ac = [sum(A[i][j] * c[j] for j in range(len(A[i]))) for i in range(s)]
    Ac2 = [sum(A[i][j] * c[j] ** 2 for j in range(len(A[i]))) for i in range(s)]
    AAc = [sum(A[i][j] * Ac[j] for j in range(len(A[i]))) for i in range(s)]
    sums = [
        (sum(b), 1), (sum(b[i] * c[i] for i in range(s)), 1 / 2),
        (sum(b[i] * c[i] ** 2 for i in range(s)), 1 / 3),
        (sum(b[i] * Ac[i] for i in range(s)), 1 / 6),
        (sum(b[i] * c[i] ** 3 for i in range(s)), 1 / 4),
        (sum(b[i] * c[i] * Ac[i] for i in range(s)), 1 / 8),
        (sum(b[i] * Ac2[i] for i in range(s)), 1 / 12),
        (sum(b[i] * AAc[i] for i in range(s)), 1 / 24),
    ]
    return [abs(got - want) for got, want in sums]


def test_dormand_prince_tableau_order_conditions():
    A = [list(row) for row in integrators._A]
    c = list(integrators._C)
    # rows of A sum to c
    for ci, row in zip(c, A):
        assert abs(sum(row) - ci) < 1e-15
    # both weight vectors are (at least) 4th order; FSAL: the last row of A is b5
    assert max(_order_conditions(list(integrators._B5), A, c)) < 1e-14
    assert max(_order_conditions(list(integrators._B4), A, c)) < 1e-14
    assert tuple(integrators._A[-1]) == tuple(integrators._B5[:-1])
    assert integrators._B5[-1] == 0.0
    # spot-check against the published rational values (Dormand & Prince 1980)
    assert integrators._B5[2] == float(Fraction(500, 1113))
    assert integrators._B4[4] == float(Fraction(-92097, 339200))


def rk45_one_step_order():
    """Empirical order p of one accepted rk45 step (the 5th-order weights) on a
    non-autonomous problem: local error(h) ~ C h^(p+1); returns log2(err(h)/err(h/2)) - 1."""
    problem = Growth()
    t0 = 1.0
    errs = []
    for h in (0.1, 0.05):
        # a span of exactly one first step and huge tolerances: one accepted step
        y, nfe = rk45(problem.f, problem.exact(t0, 0.0, problem.y0), t0, t0 + h,
                      rtol=1e3, atol=1e3, first_step=h)
        assert nfe == 7
        errs.append(float((y - problem.exact(t0 + h, 0.0, problem.y0)).abs().max()))
    return math.log2(errs[0] / errs[1]) - 1


def test_rk45_step_is_fifth_order():
    assert rk45_one_step_order() == pytest.approx(5.0, abs=0.4)


# --- fixed-step methods -------------------------------------------------------------------


def observed_order(step, t0=0.0, t1=1.0, n=(32, 64)):
    """log2 of the error ratio when the step is halved, on a non-autonomous problem."""
    p = CosGrowth()
    y0 = p.exact(t0, 0.0, p.y0)
    ref = p.exact(t1, 0.0, p.y0)
    errs = []
    for steps in n:
        grid = torch.linspace(t0, t1, steps + 1, dtype=F64).tolist()
        y = y0
        for t, s in zip(grid[:-1], grid[1:]):
            y = step(p.f, t, s, y)
        errs.append(float((y - ref).abs().max()))
    return math.log2(errs[0] / errs[1])


@pytest.mark.parametrize("name,order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
@pytest.mark.parametrize("backward", [False, True])
def test_fixed_step_convergence_order(name, order, backward):
    t0, t1 = (1.0, 0.0) if backward else (0.0, 1.0)
    assert observed_order(FIXED_STEPS[name], t0, t1) == pytest.approx(order, abs=0.15)


def test_fixed_steps_registry():
    assert FIXED_STEPS == {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step}
    # euler_step can reuse a derivative that is already known
    y = torch.tensor([[1.0]], dtype=F64)
    assert torch.equal(euler_step(None, 0.0, 0.5, y, dy=2 * y), torch.tensor([[2.0]], dtype=F64))


# --- the harness rejects broken variants ----------------------------------------------------


def test_harness_rejects_wrong_butcher_coefficient(monkeypatch):
    """A 1e-3 slip in one Dormand-Prince coefficient (a_43 = 32/9) must be caught by both
    the order-condition check and the one-step order measurement."""
    A = [list(row) for row in integrators._A]
    A[3][2] += 1e-3
    monkeypatch.setattr(integrators, "_A", tuple(tuple(r) for r in A))
    with pytest.raises(AssertionError):
        test_dormand_prince_tableau_order_conditions()
    assert rk45_one_step_order() < 3.0


def test_harness_rejects_wrong_stage_time_and_wrong_order():
    # midpoint that evaluates the slope at t instead of t + h/2: first order on the
    # non-autonomous problem
    def midpoint_wrong_time(f, t, s, y):
        h = s - t
        return y + h * f(t, y + h / 2 * f(t, y))

    assert observed_order(midpoint_wrong_time) < 1.5
    # a "Heun" that is really Euler
    assert observed_order(lambda f, t, s, y: euler_step(f, t, s, y)) < 1.5
    # Heun whose corrector uses the slope at the start twice
    assert observed_order(lambda f, t, s, y: y + (s - t) / 2 * (f(t, y) + f(t, y))) < 1.5
