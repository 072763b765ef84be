"""Exponential moving average of model weights (Polyak averaging), as DDPM and its
successors sample from.

The shadow weights are plain tensors keyed by parameter name, not a deep copy of the
module (sharded modules refuse deepcopy), updated once per optimizer step:

    shadow <- decay_k * shadow + (1 - decay_k) * param,
    decay_k = min(decay, (1 + k) / (10 + k))   with warmup (k optimizer steps so far).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2 parameters), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
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
