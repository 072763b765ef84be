"""The objective of a normalizing flow: its exact negative log-likelihood."""

from __future__ import annotations

import torch
from torch import Tensor

from .loss import Loss


def nll_loss(model, process=None, x0: Tensor | None = None, *, cond=None, generator=None, t=None, noise=None,
             levels: int | None = None, u: Tensor | None = None) -> Loss:
    """-log p(x) / D (nats per dimension) of a normalizing flow `model.log_prob`; images
    holding `levels` discrete values are uniformly dequantized first (fresh noise each
    call), so the loss is the continuous bound of `likelihood.discrete_nll` up to a constant.
    The process is unused (flows have none); the signature matches the other objectives."""
    from ..data.dequantize import dequantize

    y = dequantize(x0, levels, generator, u=u) if levels else x0
    per_sample = -model(y) / x0[0].numel()  # Flow.forward is log_prob; wrappers (DDP, FSDP2) hook forward
    return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(x0), device=x0.device))
