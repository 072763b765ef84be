"""Guidance: denoisers that wrap a denoiser, so every sampler and parameterization gets it.

**Scale convention** (one for the whole package; diffusers calls it `guidance_scale`):

    guided = unconditional + s * (conditional - unconditional)

s = 1 is the conditional prediction (no guidance), s = 0 the unconditional one, s > 1
sharpens toward the condition.  Ho & Salimans (2022) write (1 + w) cond - w uncond: their
w is s - 1.  Classifier guidance uses the same s (Dhariwal & Nichol 2021):

    score_guided(x_t) = score(x_t) + s * grad_x log p(y | x_t, t),

so s = 1 with an exact noisy classifier over an exact unconditional score is the exact
conditional score (Bayes), and s = 0 is the unconditional model.

Both act on the pair (x_0, eps) and keep x_t = alpha x_0 + sigma eps: at a fixed x_t,
x_0 and eps are affine in each other, so combining either with weights that sum to one
gives the same guided pair, and one formula serves every parameterization (eps, x0, v,
score, velocity).  A score change d (here s * grad log p) moves eps by -sigma d and x_0 by
sigma^2 / alpha d; where alpha = 0 (a flow at t = 1) x_t carries no information about y
and the prediction is left as it is.

Clipping of the x_0 estimate (`clip_x0`: a (low, high) range, or static / dynamic
thresholding, `process.thresholding`) happens after guidance, never per branch: the
wrapper takes it off the inner denoiser (`unclipped`) and applies it to the guided pair.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..process.denoiser import Prediction, clipped_prediction, time_batch
from ..process.parameterization import from_x0_eps, to_x0_eps
from ..process.base import Coefficients, TimeLike

_INHERIT = "inherit"


class _Keep:
    """The null condition of a key that is not guided: both branches see the same value
    (a super-resolution model's low-resolution image, its augmentation level)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


def unclipped(denoiser) -> tuple[Callable, object]:
    """The denoiser without its own x_0 clipping, and that clipping (a (low, high) range or
    a `Threshold`; None where it had none)."""
    clip = getattr(denoiser, "clip_x0", None)
    if clip is None:
        return denoiser, None
    inner = copy.copy(denoiser)
    inner.clip_x0 = None
    return inner, clip


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale}")
    return scale


def _per_sample(value: Tensor, x: Tensor) -> Tensor:
    """A scalar or (B,) tensor shaped to broadcast against x."""
    return value.reshape(-1, *([1] * (x.ndim - 1))) if value.ndim else value


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022) around a conditional denoiser trained
    with condition dropout.

    null_cond: the condition meaning "no condition", per key: a scalar (e.g. {"y": 10},
        the null label of a 10-class model), a tensor broadcastable to the batch, or
        `KEEP`: that key is not guided and both branches see its value.
    scale: s in uncond + s (cond - uncond); see the module docstring.
    rescale: guidance rescale phi (Lin et al. 2023, eq. 15-16): the guided prediction, in
        the inner model's own parameterization, is scaled toward the per-sample standard
        deviation of the conditional one, guided * (phi * std_cond / std_guided + 1 - phi);
        0 turns it off, 0.7 is the paper's choice.
    interval: (lo, hi) in EDM noise level sigma / alpha: guide only where lo < sigma/alpha
        <= hi and use the conditional prediction elsewhere (Kynkaanniemi et al. 2024).
    clip_x0: x_0 clipping applied after guidance, a (low, high) range or a `Threshold`
        (default: the inner denoiser's).

    Both branches run in one batched forward pass of twice the batch.
    """

    def __init__(self, denoiser, scale: float, null_cond: Mapping[str, object], *, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None, clip_x0=_INHERIT):
        if not any(v is not KEEP for v in dict(null_cond or {}).values()):
            raise ValueError("null_cond must name the null condition of every conditioning key, e.g. {'y': 10}, "
                             "and at least one key that is not KEEP")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale must be in [0, 1], got {rescale}")
        if interval is not None and not (0 <= interval[0] < interval[1]):
            raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi (EDM sigma), got {interval}")
        self.inner, inherited = unclipped(denoiser)
        self.clip_x0 = inherited if clip_x0 == _INHERIT else clip_x0
        self.scale, self.rescale, self.interval = _check_scale(scale), float(rescale), interval
        self.null_cond = dict(null_cond)
        self.prediction = getattr(denoiser, "prediction", "eps")

    @property
    def process(self):
        return self.inner.process

    def _null(self, key: str, value: Tensor) -> Tensor:
        if key not in self.null_cond:
            raise ValueError(f"no null condition for {key!r}; null_cond has {sorted(self.null_cond)}")
        null = torch.as_tensor(self.null_cond[key], dtype=value.dtype, device=value.device)
        return null.expand_as(value)

    def _scales(self, c: Coefficients, x: Tensor) -> Tensor | float:
        if self.interval is None:
            return self.scale
        sigma_edm = c.sigma / c.alpha.clamp(min=torch.finfo(c.alpha.dtype).tiny)
        inside = (sigma_edm > self.interval[0]) & (sigma_edm <= self.interval[1])
        return torch.where(inside, torch.as_tensor(self.scale, dtype=x.dtype, device=x.device),
                           torch.ones((), dtype=x.dtype, device=x.device))

    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Prediction:
        if not cond:
            raise ValueError("classifier-free guidance needs the condition, e.g. y=labels")
        c = self.process.coefficients(t, x)
        s = torch.as_tensor(self._scales(c, x), dtype=x.dtype, device=x.device)
        if bool((s == 1).all()):  # nothing to guide: one plain conditional pass
            p = self.inner(x, t, **cond)
            return clipped_prediction(x, p.x0, p.eps, c, p.var_frac, self.clip_x0)
        both = {k: torch.cat([v, v if self.null_cond.get(k) is KEEP else self._null(k, v)]) for k, v in cond.items()}
        t2 = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim == 1 else t
        p = self.inner(torch.cat([x, x]), t2, **both)
        x0_c, x0_u = p.x0.chunk(2)
        eps_c, eps_u = p.eps.chunk(2)
        s = _per_sample(s, x)
        x0, eps = x0_u + s * (x0_c - x0_u), eps_u + s * (eps_c - eps_u)
        if self.rescale:
            x0, eps = self._rescale(x, x0, eps, x0_c, eps_c, c)
        var_frac = p.var_frac.chunk(2)[0] if p.var_frac is not None else None
        return clipped_prediction(x, x0, eps, c, var_frac, self.clip_x0)

    def _rescale(self, x, x0, eps, x0_c, eps_c, c):
        dims = tuple(range(1, x.ndim))
        guided = from_x0_eps(self.prediction, x0, eps, c)
        cond = from_x0_eps(self.prediction, x0_c, eps_c, c)
        factor = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = guided * (self.rescale * factor + (1 - self.rescale))
        return to_x0_eps(self.prediction, guided, x, c)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, rescale={self.rescale}, interval={self.interval})"


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021): score + s * grad_x log p(y | x_t, t).

    classifier: `classifier(x_t, t) -> logits (B, K)`, trained on the noisy inputs x_t of
        the same process, called with t as a denoiser's network is (float32 (B,)).
    key: the conditioning key holding the labels (B,) int64.
    pass_cond: also hand the condition to the wrapped denoiser (a conditional model guided
        further, as in ADM); by default the denoiser is unconditional.
    """

    def __init__(self, denoiser, classifier: Callable[[Tensor, Tensor], Tensor], scale: float, *,
                 key: str = "y", pass_cond: bool = False, clip_x0=_INHERIT):
        self.inner, inherited = unclipped(denoiser)
        self.clip_x0 = inherited if clip_x0 == _INHERIT else clip_x0
        self.classifier, self.scale, self.key, self.pass_cond = classifier, _check_scale(scale), key, pass_cond

    @property
    def process(self):
        return self.inner.process

    def log_prob_grad(self, x: Tensor, t: TimeLike, y: Tensor) -> Tensor:
        """grad_x log p(y | x_t = x, t), the same shape as x."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, time_batch(t, x))
            logp = torch.log_softmax(logits.to(torch.float64 if x.dtype == torch.float64 else torch.float32), 1)
            chosen = logp.gather(1, y.reshape(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(chosen, xg)
        return grad.to(x.dtype)

    def __call__(self, x: Tensor, t: TimeLike, **cond) -> Prediction:
        if self.key not in cond:
            raise ValueError(f"classifier guidance needs the labels as {self.key}=...")
        p = self.inner(x, t, **(cond if self.pass_cond else {}))
        c = p.coeffs
        if self.scale == 0:
            return clipped_prediction(x, p.x0, p.eps, c, p.var_frac, self.clip_x0)
        d = self.scale * self.log_prob_grad(x, t, cond[self.key])  # the change of the score
        informative = c.alpha > 0
        safe_alpha = torch.where(informative, c.alpha, torch.ones_like(c.alpha))
        eps = torch.where(informative, p.eps - c.sigma * d, p.eps)
        x0 = torch.where(informative, p.x0 + c.sigma ** 2 / safe_alpha * d, p.x0)
        return clipped_prediction(x, x0, eps, c, p.var_frac, self.clip_x0)

    def __repr__(self) -> str:
        return f"ClassifierGuidance(scale={self.scale}, key={self.key!r})"
