"""What every sampler shares: the bookkeeping of one call (NFE, trajectory, callback), input
checks, fresh noise, and the final jump to the data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..process.denoiser import Prediction
from .timesteps import check_grid


@dataclass
class SampleOutput:
    """x: the samples.  nfe: network evaluations used.  trajectory: x at every grid time
    (first entry the input noise, last the output) when asked for, else None."""

    x: Tensor
    nfe: int
    trajectory: list[Tensor] | None = None


Callback = Callable[[dict], None]


class SamplerCall:
    """Bookkeeping for one sampler call.  `predict` counts network evaluations; `record`
    keeps the trajectory and calls `callback({"i", "t", "x", "x0"})` after each step."""

    def __init__(self, denoiser, x: Tensor, ts, cond: dict | None = None,
                 callback: Callback | None = None, return_trajectory: bool = False,
                 increasing: bool = False):
        if not torch.is_tensor(x) or x.ndim < 2:
            raise ValueError("x must be a (B, ...) tensor of initial noise")
        if not torch.isfinite(x).all():
            raise ValueError("x has non-finite values (nan or inf)")
        self.denoiser, self.process = denoiser, denoiser.process
        self.ts = check_grid(self.process, ts, increasing=increasing)
        self.cond, self.callback, self.nfe = cond or {}, callback, 0
        self.trajectory = [x] if return_trajectory else None

    def pairs(self):
        """(i, t, s): each grid time and the next one."""
        ts = self.ts.tolist()
        return [(i, t, s) for i, (t, s) in enumerate(zip(ts[:-1], ts[1:]))]

    def predict(self, x: Tensor, t: float) -> Prediction:
        self.nfe += 1
        return self.denoiser(x, t, **self.cond)

    def record(self, i: int, t: float, x: Tensor, pred: Prediction | None = None) -> None:
        if self.trajectory is not None:
            self.trajectory.append(x)
        if self.callback is not None:
            self.callback({"i": i, "t": t, "x": x, "x0": None if pred is None else pred.x0})

    def finish(self, x: Tensor, denoise: bool = True) -> SampleOutput:
        """Jump from the last grid time to the data (x_0 estimate) and close the call.

        The jump is skipped when sigma is already 0 there (flows at t = 0) or when
        `denoise` is False (then x stays at the last grid time)."""
        t_last = float(self.ts[-1])
        if denoise and float(self.process.sigma(t_last)) > 0:
            pred = self.predict(x, t_last)
            x = pred.x0
            self.record(len(self.ts) - 1, t_last, x, pred)
        if not torch.isfinite(x).all():
            raise FloatingPointError("sampler produced non-finite values; check the model, "
                                     "the time grid and the step count")
        return SampleOutput(x, self.nfe, self.trajectory)


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def batch_norm(v: Tensor) -> Tensor:
    """Per-sample L2 norm, shaped (B, 1, ..., 1) to broadcast over v."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))
