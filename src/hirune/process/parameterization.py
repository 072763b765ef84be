"""Conversions between prediction targets.

A network predicts one of five equivalent quantities about x_t = alpha x_0 + sigma eps:

    "eps"       the noise eps                              (DDPM)
    "x0"        the clean data x_0
    "v"         alpha eps - sigma x_0                      (Salimans & Ho 2022)
    "score"     grad log p_t(x_t) = -eps / sigma           (NCSN, score SDEs)
    "velocity"  dx_t/dt = alpha' x_0 + sigma' eps          (flow matching)

Given x_t and the coefficients at t, any one of them determines the pair (x_0, eps), and
the pair determines all the others.  `to_x0_eps` and `from_x0_eps` are the only place
these formulas live.  For "v" the inverse uses alpha^2 + sigma^2, so it holds for any
path, not only variance-preserving ones.
"""

from __future__ import annotations

from torch import Tensor

from .base import Coefficients

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def check_prediction(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; valid: {list(PREDICTIONS)}")


def to_x0_eps(kind: str, pred: Tensor, x: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
    """(x_0, eps) implied by a prediction `pred` of type `kind` at x = x_t."""
    check_prediction(kind)
    if kind == "eps":
        return (x - c.sigma * pred) / c.alpha, pred
    if kind == "x0":
        return pred, (x - c.alpha * pred) / c.sigma
    if kind == "v":
        norm = c.alpha**2 + c.sigma**2
        return (c.alpha * x - c.sigma * pred) / norm, (c.sigma * x + c.alpha * pred) / norm
    if kind == "score":
        eps = -c.sigma * pred
        return (x - c.sigma * eps) / c.alpha, eps
    # velocity: solve [alpha sigma; alpha' sigma'] [x0; eps] = [x; u]
    det = c.alpha * c.dsigma - c.sigma * c.dalpha
    return (c.dsigma * x - c.sigma * pred) / det, (c.alpha * pred - c.dalpha * x) / det


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, c: Coefficients) -> Tensor:
    """The prediction of type `kind` that corresponds to (x_0, eps)."""
    check_prediction(kind)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return c.alpha * eps - c.sigma * x0
    if kind == "score":
        return -eps / c.sigma
    return c.dalpha * x0 + c.dsigma * eps
