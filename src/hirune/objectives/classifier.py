"""The objective of a noise-aware classifier p(y | x_t, t), the classifier of classifier
guidance (Dhariwal & Nichol 2021)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..process.base import GaussianProcess
from ..process.denoiser import time_batch
from .diffusion import _noisy
from .loss import Loss


def classifier_loss(model, process: GaussianProcess, x0: Tensor, *, cond=None, generator=None,
                    t=None, noise=None) -> Loss:
    """Cross-entropy of a noise-aware classifier `model(x_t, t) -> logits` on x_t drawn
    exactly as for the denoiser (times uniform over the process), labels cond["y"]; the
    batch accuracy is reported as a term."""
    if not cond or cond.get("y") is None:
        raise ValueError("the classifier objective needs labels: cond={'y': labels} (class_conditional=true)")
    y = cond["y"]
    t, noise, x_t, _ = _noisy(process, x0, t, noise, generator)
    logits = model(x_t, time_batch(t, x_t))
    per_sample = F.cross_entropy(logits.float(), y, reduction="none")
    accuracy = (logits.argmax(1) == y).float().mean().detach()
    return Loss(per_sample.mean(), per_sample.detach(), t, {"accuracy": accuracy})
