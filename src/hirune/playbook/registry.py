"""The playbooks by name: name -> (function, one line on what it shows).

Each function takes keyword options (their defaults are small: under a minute on two CPU
cores) and returns a `report.Report`; `hirune playbook NAME key=value ...` runs one.
"""

from __future__ import annotations

from collections.abc import Callable

from . import activations, collectives, data_parallel, memory, parameters, recompute, ring, zero

PLAYBOOKS: dict[str, tuple[Callable, str]] = {
    "memory-profile": (memory.playbook, "weights, gradients, AdamW state and activations over the first steps"),
    "parameters": (parameters.playbook, "the GPT parameter-count formula against sum(p.numel())"),
    "activations": (activations.playbook, "saved activation bytes against b and s: fit and formula, math vs sdpa"),
    "recompute": (recompute.playbook, "no, selective and full recomputation: bytes kept, time, equal gradients"),
    "collectives": (collectives.playbook, "every collective on 3 gloo processes; what gloo's reduce leaves"),
    "ring-allreduce": (ring.playbook, "a hand-written ring all-reduce: equal to all_reduce, 2(N-1)K/N bytes"),
    "data-parallel": (data_parallel.playbook, "blocking, overlapped and bucketed hand DP against DDP"),
    "zero1": (zero.playbook, "hand-written ZeRO-1 against ZeroRedundancyOptimizer"),
}


def get(name: str) -> tuple[Callable, str]:
    if name not in PLAYBOOKS:
        raise KeyError(f"no playbook {name!r}; valid: {', '.join(PLAYBOOKS)}")
    return PLAYBOOKS[name]
