"""Thresholding of the x_0 estimate: static clipping and Imagen's dynamic thresholding.

Pixel data lives in [-1, 1], so a denoiser's estimate of the clean image x_0 should too.
Early in sampling, and much more under classifier-free guidance with a large weight s
(guided = uncond + s (cond - uncond) extrapolates), the estimate leaves that box; the
sampler then steps toward an image it can never reach and the error compounds
(Saharia et al. 2022, "Imagen", sec. 2.3).

* **static** thresholding clips: x_0 <- clip(x_0, -1, 1).  It keeps x_0 in range, but at
  large s many pixels sit at the bound and the samples come out saturated (flat, over-
  bright): every value above 1 becomes 1 and their order is lost.
* **dynamic** thresholding rescales per sample.  With p a percentile (Imagen: 99.5 %),

      s = the p-th quantile of |x_0| over the pixels of that sample,
      s = max(s, 1),
      x_0 <- clip(x_0, -s, s) / s.

  When the sample is already within [-1, 1] (s <= 1, floored to 1) nothing changes; when
  it overshoots, the tail beyond s is clipped and everything is divided by s, which
  pushes saturated pixels inward: values far above 1 keep their order instead of all
  becoming 1.  s is per sample -- one bright image in the batch must not dim the others.

Both run on the x_0 estimate *after* guidance (a denoiser's `clip_x0`; guidance wrappers
take it off the inner denoiser and apply it to the guided prediction), and the sampler's
eps is made consistent with the new x_0 (x_t = alpha x_0 + sigma eps), so every sampler
gets it.  Only meaningful where the data is in [-1, 1]: pixels, not latents.

    Threshold("dynamic", 0.995)(x0)   # x0: (B, ...) -> (B, ...)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

THRESHOLDS = ("none", "static", "dynamic")
DEFAULT_PERCENTILE = 0.995  # Imagen's 99.5th percentile


@dataclass(frozen=True)
class Threshold:
    """A thresholding of x_0: kind "static" (clip to [-1, 1]) or "dynamic" (per-sample
    percentile p in (0, 1] of |x_0|, floored at 1; see the module docstring)."""

    kind: str = "dynamic"
    percentile: float = DEFAULT_PERCENTILE

    def __post_init__(self):
        if self.kind not in ("static", "dynamic"):
            raise ValueError(f"threshold={self.kind!r} is not valid; valid: 'static', 'dynamic'")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < float(p) <= 1.0:
            raise ValueError(f"percentile={p!r} is not valid; valid: a number in (0, 1], e.g. 0.995")
        object.__setattr__(self, "percentile", float(p))

    def scale(self, x0: Tensor) -> Tensor:
        """s per sample: (B,), the p-th quantile of |x_0| over each sample's values, at least 1
        (static: 1)."""
        if self.kind == "static":
            return torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
        flat = x0.abs().reshape(x0.shape[0], -1)
        if flat.dtype not in (torch.float32, torch.float64):  # quantile takes no half precision
            flat = flat.float()
        s = torch.quantile(flat, self.percentile, dim=1).to(x0.dtype)
        return s.clamp(min=1.0)

    def __call__(self, x0: Tensor) -> Tensor:
        """x_0 (B, ...) thresholded: clip(x0, -s, s) / s with s per sample."""
        s = self.scale(x0).reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s


def make_threshold(kind: str, percentile: float = DEFAULT_PERCENTILE) -> Threshold | None:
    """The thresholding named by `kind` (one of THRESHOLDS): None for "none"."""
    if kind not in THRESHOLDS:
        raise ValueError(f"threshold={kind!r} is not valid; valid: {', '.join(THRESHOLDS)}")
    return None if kind == "none" else Threshold(kind, percentile)


def apply_clip(x0: Tensor, clip: Threshold | tuple[float, float] | None) -> Tensor:
    """x_0 under a denoiser's `clip_x0`: a Threshold, a (low, high) clamp range, or None."""
    if clip is None:
        return x0
    if isinstance(clip, Threshold):
        return clip(x0)
    return x0.clamp(*clip)


def with_clip(denoiser, clip: Threshold | tuple[float, float] | None):
    """A shallow copy of `denoiser` (any object with a `clip_x0` attribute: a Denoiser or a
    guidance wrapper, which applies it after guidance) with `clip_x0` = clip."""
    if not hasattr(denoiser, "clip_x0"):
        raise ValueError(f"{denoiser!r} has no x0 clipping (clip_x0) to set")
    out = copy.copy(denoiser)
    out.clip_x0 = clip
    return out


__all__ = ["DEFAULT_PERCENTILE", "THRESHOLDS", "Threshold", "apply_clip", "make_threshold", "with_clip"]
