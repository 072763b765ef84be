"""Expert denoisers by noise level: SDXL's base and refiner (Podell et al. 2023, sec. 2.5),
eDiff-I's ensemble of expert denoisers (Balaji et al. 2022).

A refiner is a model trained only on the low-noise end of the schedule (SDXL: the 200
lowest of 1000 discrete levels), where the image's fine detail is decided.  Sampling
starts with the base model and hands over at the time `switch`: every step from a grid
time t > switch uses the base's prediction, every step from t <= switch the refiner's.
The handover is one denoiser, so every sampler works with it unchanged:

    D(x, t) = high(x, t) if t > switch else low(x, t)

(diffusers' `denoising_end` / `denoising_start` split one grid between two pipelines the
same way.)  Both must share the forward process, which is checked on a few times.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..process.denoiser import Prediction, time_batch


class ExpertSwitch:
    """high for t > switch, low for t <= switch (times in the process's own units); the
    condition keywords go to both.  A batch whose times fall on both sides is split."""

    def __init__(self, high, low, switch: float):
        if not _same_process(high.process, low.process):
            raise ValueError(f"the two experts must share the forward process; got {high.process!r} and "
                             f"{low.process!r}")
        process = high.process
        if not process.t_min <= switch <= process.t_max:
            raise ValueError(f"switch={switch} is not valid; valid: a time in [{process.t_min}, {process.t_max}]")
        self.high, self.low, self.switch = high, low, float(switch)
        self.prediction = getattr(high, "prediction", "eps")

    @property
    def process(self):
        return self.high.process

    def __call__(self, x: Tensor, t, **cond) -> Prediction:
        low = time_batch(t, x).double() <= self.switch
        if bool(low.all()):
            return self.low(x, t, **cond)
        if not bool(low.any()):
            return self.high(x, t, **cond)
        a, b = self.high(x, t, **cond), self.low(x, t, **cond)
        pick = low.view(-1, *([1] * (x.ndim - 1)))
        var = None if a.var_frac is None or b.var_frac is None else torch.where(pick, b.var_frac, a.var_frac)
        return Prediction(torch.where(pick, b.x0, a.x0), torch.where(pick, b.eps, a.eps), a.coeffs, var)


def _same_process(a, b) -> bool:
    if type(a) is not type(b) or (a.t_min, a.t_max) != (b.t_min, b.t_max):
        return False
    t = torch.linspace(a.t_min, a.t_max, 7, dtype=torch.float64)
    return bool(torch.allclose(a.alpha(t).double(), b.alpha(t).double()) and
                torch.allclose(a.sigma(t).double(), b.sigma(t).double()))


__all__ = ["ExpertSwitch"]
