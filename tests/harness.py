"""The exact-score harness: does a cloud of samples follow the demo Gaussian mixture?

Three checks, each calibrated against the sampling noise of N = 20 000 exact draws:
  * sliced Wasserstein-1 distance to a fresh exact sample below SW_TOL,
  * mixture weights recovered (component of each sample by the exact classifier),
  * each component's spread (std per axis) recovered.
`test_harness_tolerances_sit_above_sampling_noise` shows that exact samples pass with a
margin; `test_harness_rejects_broken_samplers` shows that plausible bugs do not.
"""

from __future__ import annotations

import torch

from hirune.metrics.distances import sliced_wasserstein
from hirune.process.mixture import demo_mixture

N = 20_000
GM = demo_mixture()
TRUTH = GM.sample(N, torch.Generator().manual_seed(12345))

# Exact-vs-exact SW at N = 20 000 has mean ~0.02 and max ~0.04 over seeds
# (test_harness_tolerances_sit_above_sampling_noise recomputes it); 0.05 leaves room
# for the discretisation error of a correct sampler while the broken variants land
# at 0.08 - 1.
SW_TOL = 0.05
# Weight of component k estimated from N samples: sd = sqrt(w(1-w)/N) <= 0.0036; 4 sd.
WEIGHT_TOL = 0.015
# Per-axis std of a component estimated from >= 4000 samples: relative sd ~ 1/sqrt(2n)
# <= 1.1%; a 5% band is ~4.5 sd and still rejects variance bugs.
STD_RTOL = 0.05


def mixture_errors(x: torch.Tensor) -> dict:
    x = x.to(torch.float64)
    labels = GM.classify(x)
    weights = torch.stack([(labels == k).double().mean() for k in range(len(GM.weights))])
    std_err = []
    for k in range(len(GM.weights)):
        xk = x[labels == k]
        std_err.append(float(((xk.std(0) - GM.stds[k]) / GM.stds[k]).abs().max()) if len(xk) > 10 else 1.0)
    return {
        "sw": sliced_wasserstein(x, TRUTH),
        "weight_err": float((weights - GM.weights).abs().max()),
        "std_err": max(std_err),
    }


def matches_mixture(x: torch.Tensor) -> tuple[bool, dict]:
    e = mixture_errors(x)
    ok = e["sw"] < SW_TOL and e["weight_err"] < WEIGHT_TOL and e["std_err"] < STD_RTOL
    return ok, e
