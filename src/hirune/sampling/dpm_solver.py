"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a second-order multistep solver of the
probability-flow ODE written in log-SNR lambda = log(alpha / sigma) with data predictions."""

from __future__ import annotations

import math

from torch import Tensor

from .common import SampleOutput, SamplerCall


def dpmpp_2m(denoiser, x: Tensor, ts, *, cond=None, callback=None,
             return_trajectory: bool = False) -> SampleOutput:
    """x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D,  h = lambda_s - lambda_t, with
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,  r = h_prev / h  (first order, D = x0_t, on the
    first step).  The final jump to the data (sigma = 0) is first order: x = x0_hat."""
    call = SamplerCall(denoiser, x, ts, cond, callback, return_trajectory)
    x0_prev, h_prev = None, math.inf
    for i, t, s in call.pairs():
        pred = call.predict(x, t)
        ct, cs = pred.coeffs, call.process.coefficients(s, x)
        lam_t, lam_s = (float(call.process.log_snr(u)) / 2 for u in (t, s))
        h = lam_s - lam_t
        # e^{-h} = (alpha_t sigma_s) / (sigma_t alpha_s), finite even at alpha_t = 0 (h = inf)
        exp_neg_h = ct.alpha * cs.sigma / (ct.sigma * cs.alpha)
        d = pred.x0
        if x0_prev is not None and math.isfinite(h_prev) and math.isfinite(h):
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * pred.x0 - 1 / (2 * r) * x0_prev
        x = cs.sigma / ct.sigma * x - cs.alpha * (exp_neg_h - 1) * d
        x0_prev, h_prev = pred.x0, h
        call.record(i, t, x, pred)
    return call.finish(x)
