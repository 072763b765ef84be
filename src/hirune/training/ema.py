"""Exponential moving average of model weights (Polyak averaging), as DDPM and its
successors sample from.

The shadow weights are plain tensors keyed by parameter name, not a deep copy of the
module (sharded modules refuse deepcopy), updated once per optimizer step:

    shadow <- decay_k * shadow + (1 - decay_k) * param,
    decay_k = min(decay, (1 + k) / (10 + k))   with warmup (k optimizer steps so far).

A power EMA (`gamma`, Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models") instead uses decay_k = (1 - 1/(k + 1))^(gamma + 1): the shadow
after t steps is the average of every step's weights with weight proportional to
step^gamma, so it averages over a fixed *fraction* of the run whatever its length, where a
constant decay averages over a fixed number of steps.  The paper names it by the
relative width of that average, sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))
(`gamma_of_sigma_rel`): gamma 16.97 is sigma_rel 0.05, gamma 6.94 is 0.10.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2 parameters), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def sigma_rel(gamma: float) -> float:
    """The relative width of a power EMA's averaging profile (Karras et al. 2024)."""
    return (gamma + 1) ** 0.5 / ((gamma + 2) * (gamma + 3) ** 0.5)


def gamma_of_sigma_rel(width: float) -> float:
    """The exponent gamma whose power EMA has relative width `width` (bisection: sigma_rel
    falls monotonically in gamma, from 0.29 at gamma 0 towards 0)."""
    if not 0.0 < width < sigma_rel(0.0):
        raise ValueError(f"sigma_rel must be in (0, {sigma_rel(0.0):.4f}), got {width}")
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if sigma_rel(mid) > width else (low, mid)
    return (low + high) / 2


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, gamma: float = 0.0):
        """`gamma` > 0: a power EMA with that exponent (`decay` and `warmup` are then unused)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not gamma >= 0.0:
            raise ValueError(f"the power EMA's gamma must be >= 0 (0: a constant decay), got {gamma}")
        self.decay, self.warmup, self.gamma, self.num_updates = decay, warmup, gamma, 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        if self.gamma:
            return (1 - 1 / (self.num_updates + 1)) ** (self.gamma + 1)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call once per optimizer step (not per micro-batch)."""
        d = self.current_decay()
        params = dict(model.named_parameters())
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        # on the local shards under FSDP2 (shadow and parameter share the placement)
        torch._foreach_lerp_([_local(s) for s in shadow],
                             [_local(params[n].detach()).to(s.dtype) for n, s in zip(names, shadow)], 1 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, s in self.shadow.items():
            params[n].copy_(s)

    @contextmanager
    def applied(self, model: nn.Module):
        """Temporarily swap the EMA weights into `model` (e.g. to sample), then restore."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for n, b in backup.items():
                    params[n].copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, shadow: dict[str, Tensor], num_updates: int) -> None:
        missing = set(self.shadow) ^ set(shadow)
        if missing:
            raise ValueError(f"EMA state does not match the model; differing names: {sorted(missing)[:5]}")
        for n, v in shadow.items():
            self.shadow[n].copy_(v)
        self.num_updates = num_updates
