"""Numerical ODE integrators for dy/dt = f(t, y) on tensors, independent of any model.

Fixed-step Euler, midpoint and Heun steps, and adaptive Dormand-Prince RK5(4) ("RK45",
the method of scipy's solve_ivp and of the score-SDE paper's likelihoods), written in
torch so they run on the GPU.  The step size is shared by the whole batch (dim 0); the error
norm is scipy's RMS, taken per sample, and the worst sample sets the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

ODEFunc = Callable[[float, Tensor], Tensor]


def euler_step(f: ODEFunc, t: float, s: float, y: Tensor, dy: Tensor | None = None) -> Tensor:
    return y + (s - t) * (f(t, y) if dy is None else dy)


def midpoint_step(f: ODEFunc, t: float, s: float, y: Tensor) -> Tensor:
    h = s - t
    return y + h * f(t + h / 2, y + h / 2 * f(t, y))


def heun_step(f: ODEFunc, t: float, s: float, y: Tensor) -> Tensor:
    """Heun's method (explicit trapezoid, 2nd order), as in EDM Alg. 1."""
    h = s - t
    d = f(t, y)
    y_euler = y + h * d
    return y + h / 2 * (d + f(s, y_euler))


FIXED_STEPS = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step}

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def rk45(f: ODEFunc, y: Tensor, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
         first_step: float | None = None, max_steps: int = 10_000) -> tuple[Tensor, int]:
    """Integrate from t0 to t1 (either direction) adaptively.  Returns (y(t1), evaluations)."""
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    h = first_step or span / 100
    t, nfe = t0, 1
    k1 = f(t, y)
    if not bool(torch.isfinite(k1).all()):
        raise FloatingPointError(f"rk45: f(t0 = {t0}, y0) is not finite")
    for _ in range(max_steps):
        if abs(t1 - t) <= 1e-12 * max(1.0, span):
            return y, nfe
        h = min(h, abs(t1 - t))
        dt = direction * h
        ks = [k1]
        for c, a in zip(_C[1:], _A[1:]):
            yi = y + dt * sum(aj * kj for aj, kj in zip(a, ks))
            ks.append(f(t + c * dt, yi))
        nfe += 6
        y5 = y + dt * sum(b * k for b, k in zip(_B5, ks))
        err = dt * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks))
        scale = atol + rtol * torch.maximum(y.abs(), y5.abs())
        # RMS per sample, worst sample decides: a batch-wide RMS would let one bad
        # trajectory hide among many good ones.
        err_norm = float((err / scale).pow(2).flatten(1).mean(1).sqrt().max())
        if math.isnan(err_norm):
            err_norm = math.inf  # a stage overflowed: reject and shrink the step
        if err_norm <= 1.0:
            t, y, k1 = t + dt, y5, ks[-1]  # FSAL: the last stage is f at the new point
            if abs(t1 - t) <= 1e-12 * max(1.0, span):
                return y, nfe
        factor = 5.0 if err_norm == 0 else min(5.0, max(0.2, 0.9 * err_norm ** -0.2))
        h = h * factor
        if h <= 10 * abs(math.nextafter(t, t1) - t):
            raise FloatingPointError(f"rk45: step size underflow at t = {t} (f not finite or "
                                     "the problem is too stiff)")
    raise RuntimeError(f"rk45 did not reach t = {t1} in {max_steps} steps (stopped at t = {t})")
