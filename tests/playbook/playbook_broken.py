"""Deliberately broken teaching implementations: each harness must reject its own.

Module-level (not in the test files) so the gloo processes can import them by name."""

from __future__ import annotations

import torch

from hirune.playbook.data_parallel import Blocking, Buckets
from hirune.playbook.ring import exchange
from hirune.playbook.zero import ZeRO1


def ring_sends_wrong_chunk(t: torch.Tensor, rank: int, world: int) -> int:
    """The ring with one mistake: in the reduce-scatter every step sends chunk `rank`, not `rank - k`."""
    chunks = list(torch.tensor_split(t, world))
    sent = 0
    for k in range(world - 1):
        out, into = chunks[rank], chunks[(rank - k - 1) % world]
        incoming = torch.empty_like(into)
        sent += exchange(out, incoming, rank, world)
        into += incoming
    for k in range(world - 1):
        out, into = chunks[(rank + 1 - k) % world], chunks[(rank - k) % world]
        incoming = torch.empty_like(into)
        sent += exchange(out, incoming, rank, world)
        into.copy_(incoming)
    return sent


class NoDivision(Blocking):
    """Sums the gradients but forgets the 1 / N: N times the mean gradient."""

    def finish(self) -> None:
        for p in self.params:
            self.traffic.all_reduce(p.grad)


class DropsLastBucket(Buckets):
    """Never flushes the last, partly filled bucket: those gradients stay local (and undivided)."""

    def flush(self) -> None:
        self.filling = []


class SkipsLastPartition(ZeRO1):
    """Broadcasts every group but the last rank's: the others keep stale copies of those parameters."""

    def broadcast(self) -> None:
        for p, owner in zip(self.params, self.owner):
            if owner != self.world - 1:
                self.traffic.broadcast(p.data, src=owner)
