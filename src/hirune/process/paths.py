"""Flow-matching probability paths (Lipman et al. 2023; Liu et al. 2023).

hirune runs *every* process from data (t = 0) to noise (t = 1), flows included, so that
one set of samplers walks time downwards for all families.  The flow papers write time
the other way (t = 0 noise, t = 1 data); their time is 1 - t here and their velocity is
minus ours.  A model trained in that convention is wrapped with t -> 1 - t and a sign
flip of its output; nothing else changes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GaussianProcess, TimeLike, as_time


class CondOT(GaussianProcess):
    """Conditional optimal-transport path of flow matching (Lipman et al. 2023, eq. 20-23),
    in hirune's time: x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps.

    At t = 0 the path keeps a little noise of scale sigma_min around each data point;
    the conditional target velocity is (1 - sigma_min) eps - x_0.
    """

    def __init__(self, sigma_min: float = 1e-4):
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min
        self.t_min, self.t_max = 0.0, 1.0

    def alpha(self, t: TimeLike) -> Tensor:
        return 1 - as_time(t)

    def dalpha(self, t: TimeLike) -> Tensor:
        return torch.full_like(as_time(t), -1.0)

    def sigma(self, t: TimeLike) -> Tensor:
        return self.sigma_min + (1 - self.sigma_min) * as_time(t)

    def dsigma(self, t: TimeLike) -> Tensor:
        return torch.full_like(as_time(t), 1 - self.sigma_min)


class RectifiedFlow(CondOT):
    """Linear interpolation x_t = (1 - t) x_0 + t eps (rectified flow, Liu et al. 2023): the
    conditional-OT path with sigma_min = 0, reaching the data exactly at t = 0.

    Its marginal velocity is E[eps - x_0 | x_t]; Euler steps on it are exactly DDIM steps.
    """

    def __init__(self):
        super().__init__(sigma_min=0.0)

    def __repr__(self) -> str:
        return f"RectifiedFlow(t in [{self.t_min}, {self.t_max}])"
