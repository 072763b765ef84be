"""The playbooks: the large-model training notes as runnable measurements.

These are TEACHING implementations of what the notes measure, kept apart from the engine:
hirune's trainer never uses them.  It trains with torch's DistributedDataParallel,
ZeroRedundancyOptimizer, FSDP2 and DTensor (`hirune.distributed`); here the same ideas are
written out by hand, small enough to read, and each is checked against torch's version.

    gpt.py            a small GPT-style decoder (math or sdpa attention; selective / full recomputation)
    memory.py         counting weights, gradients, optimizer state and saved activations; the first steps
    parameters.py     the closed-form parameter count against the real one
    activations.py    saved bytes against batch and sequence length: fit and formula (Korthikanti et al.)
    recompute.py      none / selective / full recomputation: bytes, time, equal gradients
    launch.py         N gloo processes on this machine, no torchrun
    collectives.py    every collective before and after; what gloo's reduce leaves on other ranks
    ring.py           a ring all-reduce by hand, its bytes 2 (N - 1) K / N
    data_parallel.py  blocking, overlapped and bucketed data parallelism by hand, against DDP
    zero.py           ZeRO-1 by hand, against ZeroRedundancyOptimizer
    report.py         a playbook's table, JSON and figure
    registry.py       name -> (function, description): `hirune playbook NAME`
"""

from .registry import PLAYBOOKS, get
from .report import Report, table, write

__all__ = ["PLAYBOOKS", "Report", "get", "table", "write"]
