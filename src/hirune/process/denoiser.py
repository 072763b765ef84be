"""The denoiser protocol: one wrapper between a network and every sampler.

A *denoiser* is any callable `D(x, t, **cond) -> Prediction` with a `.process` attribute.
`Denoiser` wraps a network once -- which process it was trained on and what it predicts --
and hands samplers, guidance and likelihood code a `Prediction`, from which every target
(x_0, eps, v, score, velocity) is read.  Changing what a network predicts never touches a
sampler.  Guidance methods (classifier-free, classifier) are denoisers that wrap a denoiser.

The network is called as `model(x, t, **cond)` with x of shape (B, ...) and t a float32
tensor of shape (B,) (float64 for float64 x) in the process's own time units (integer steps 0..T-1 for discrete
schedules, [0, 1] for SDEs and flows).  t stays float32 whatever the dtype of x: in
bfloat16, 999 rounds to 1000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .parameterization import check_prediction, from_x0_eps, to_x0_eps
from .base import Coefficients, GaussianProcess, TimeLike
from .thresholding import Threshold, apply_clip


@dataclass(frozen=True)
class Prediction:
    """What a denoiser says about x_t: the pair (x_0, eps) and the coefficients at t.

    x0, eps: same shape as x.  var_frac: for learned-variance models (Improved DDPM eq. 15),
    the interpolation v in [0, 1] between log beta tilde (0) and log beta (1); else None.
    """

    x0: Tensor
    eps: Tensor
    coeffs: Coefficients
    var_frac: Tensor | None = None

    @property
    def score(self) -> Tensor:
        return -self.eps / self.coeffs.sigma

    @property
    def v(self) -> Tensor:
        return from_x0_eps("v", self.x0, self.eps, self.coeffs)

    @property
    def velocity(self) -> Tensor:
        return from_x0_eps("velocity", self.x0, self.eps, self.coeffs)


def clipped_prediction(x: Tensor, x0: Tensor, eps: Tensor, c: Coefficients, var_frac: Tensor | None,
                       clip: Threshold | tuple[float, float] | None) -> Prediction:
    """The Prediction, with x0 clamped to `clip` (a (low, high) range) or thresholded by it
    (a `Threshold`: static or dynamic, `process.thresholding`), if given, and eps made
    consistent with it (x = alpha x0 + sigma eps)."""
    if clip is not None:
        x0 = apply_clip(x0, clip)
        eps = (x - c.alpha * x0) / c.sigma
    return Prediction(x0, eps, c, var_frac)


def time_batch(t: TimeLike, x: Tensor) -> Tensor:
    """t as the (B,) tensor a network receives: float32, or float64 when x is float64 --
    never the (possibly half-precision) dtype of x."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device).to(dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def check_prediction_suits(prediction: str, process: GaussianProcess) -> None:
    """A known prediction that can recover x0 on `process`: eps and score cannot where
    alpha(t_max) = 0 (zero terminal SNR: flows)."""
    check_prediction(prediction)
    if prediction in ("eps", "score") and float(process.alpha(process.t_max)) == 0.0:
        raise ValueError(
            f"{prediction!r} prediction cannot be used with {process!r}: alpha(t_max) = 0 "
            "(zero terminal SNR), where x_0 = (x - sigma eps) / alpha divides by zero. "
            "Use 'v', 'x0' or 'velocity' prediction."
        )


class Denoiser:
    """Wrap `model` (trained on `process` to predict `prediction`) as a denoiser.

    learned_variance: the model returns 2C channels on dim 1, the prediction then the
        Improved-DDPM variance interpolation v in [-1, 1].
    clip_x0: optional (low, high) to clamp the x_0 estimate, or a `Threshold` (static /
        dynamic thresholding, Imagen); eps is made consistent.  Guidance wrappers take it
        off this denoiser and apply it after guidance.
    """

    def __init__(
        self, model: Callable[..., Tensor], process: GaussianProcess, prediction: str = "eps",
        *, learned_variance: bool = False,
        clip_x0: Threshold | tuple[float, float] | None = None,
    ):
        check_prediction_suits(prediction, process)
        self.model, self.process, self.prediction = model, process, prediction
        self.learned_variance, self.clip_x0 = learned_variance, clip_x0

    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Prediction:
        out = self.model(x, time_batch(t, x), **cond)
        var_frac = None
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"learned-variance model must return {2 * x.shape[1]} channels "
                                 f"on dim 1 for input {tuple(x.shape)}, got {tuple(out.shape)}")
            out, v = out.chunk(2, dim=1)
            var_frac = (v + 1) / 2
        if out.shape != x.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} does not match input "
                             f"{tuple(x.shape)}")
        c = self.process.coefficients(t, x)
        x0, eps = to_x0_eps(self.prediction, out, x, c)
        return clipped_prediction(x, x0, eps, c, var_frac, self.clip_x0)

    def __repr__(self) -> str:
        return f"Denoiser({self.prediction!r} over {self.process!r})"
