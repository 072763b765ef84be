"""The flow paths (hirune.process.paths): RectifiedFlow and CondOT.  Their end points (t = 0
data, t = 1 noise; CondOT keeps sigma_min at t = 0), CondOT's sigma_min range, and CondOT with
sigma_min = 0 being exactly the rectified flow.

Everything is float64.
"""

from __future__ import annotations

import pytest
import torch

from hirune import CondOT, RectifiedFlow

f64 = torch.float64


@pytest.mark.parametrize("proc", [RectifiedFlow(), CondOT(), CondOT(sigma_min=0.1)], ids=repr)
def test_flow_end_points(proc):
    assert float(proc.alpha(1.0)) == 0.0
    assert abs(float(proc.sigma(1.0)) - 1.0) <= 1e-15
    assert float(proc.alpha(0.0)) == 1.0
    expected_sigma0 = proc.sigma_min if isinstance(proc, CondOT) else 0.0
    assert float(proc.sigma(0.0)) == expected_sigma0
    assert (proc.t_min, proc.t_max) == (0.0, 1.0)
    t = torch.linspace(0, 1, 11, dtype=f64)
    assert (proc.alpha(t).diff() < 0).all() and (proc.sigma(t).diff() > 0).all(), "t = 0 data, t = 1 noise"


@pytest.mark.parametrize("sigma_min", [1.0, 1.5, -0.1])
def test_cond_ot_sigma_min_out_of_range(sigma_min):
    with pytest.raises(ValueError, match="sigma_min"):
        CondOT(sigma_min=sigma_min)


def test_cond_ot_sigma_min_zero_is_rectified_flow():
    t = torch.linspace(0, 1, 7, dtype=f64)
    a, b = CondOT(0.0), RectifiedFlow()
    for f in ("alpha", "sigma", "dalpha", "dsigma"):
        torch.testing.assert_close(getattr(a, f)(t), getattr(b, f)(t), rtol=0, atol=0)
