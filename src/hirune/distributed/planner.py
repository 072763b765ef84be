"""The memory and communication planner behind `hirune plan`.

Per-GPU memory of data-parallel training under each strategy, with the ZeRO paper's
accounting (Rajbhandari et al. 2020, sec. 3 and 5): with mixed precision a parameter
costs 2 bytes (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 master weights, Adam's m
and v); with fp32 training 4 + 4 + 8.  Each ZeRO stage shards one more of the three over
the N data-parallel ranks:

    strategy  weights   gradients  optimizer states       hirune runs it as
    ddp       2 P       2 P        12 P                   DistributedDataParallel
    zero1     2 P       2 P        12 P / N               DDP + ZeroRedundancyOptimizer
    zero2     2 P       2 P / N    12 P / N               FSDP2, reshard_after_forward=False
    zero3     2 P / N   2 P / N    12 P / N               FSDP2, reshard_after_forward=True

plus hirune's fp32 EMA of the weights (4 P, sharded like the weights under FSDP2) and
the activations, measured, not guessed: the bytes autograd saves for the backward pass in
one forward of the real model at the per-GPU micro-batch (`training.measure`).

Communication per GPU per optimizer step, for ring collectives of P elements over N ranks
(each moves (N - 1)/N of the data per rank for all-gather and reduce-scatter, twice that
for all-reduce):

    ddp    one all-reduce of the gradients per step (no_sync on all but the last micro-batch)
    zero1  the same all-reduce, then an all-gather of the updated weight shards
    zero2  per micro-batch: all-gather the weights once, reduce-scatter the gradients
    zero3  per micro-batch: all-gather in forward and again in backward, reduce-scatter

Time: t = alpha (latency per hop) * hops + bytes / bandwidth per collective, summed; DDP
buckets gradients (25 MB) and FSDP2 communicates per wrapped block, which sets the number
of collectives.  The backward pass (taken as 2/3 of the measured compute) hides
communication when overlap is on; the estimated step time is the measured one-device
compute plus whatever communication is exposed, and the scaling efficiency is their ratio.

Tensor and sequence parallelism: `distributed/layouts.py`.
"""


from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .strategy import check_strategy

# (weights, gradients, optimizer states) bytes per parameter
PRECISION_BYTES = {"mixed": (2, 2, 12), "fp32": (4, 4, 8)}

# how each strategy divides (weights, gradients, optimizer states) by N
_SHARDED = {"ddp": (False, False, False), "zero1": (False, False, True),
            "zero2": (False, True, True), "zero3": (True, True, True)}

# links: (bandwidth in GB/s per direction as a ring sees it, latency per hop in microseconds)
LINKS = {"nvlink": (150.0, 5.0), "pcie": (12.0, 10.0), "infiniband": (40.0, 10.0),
         "ethernet": (1.2, 50.0), "loopback": (5.0, 30.0)}
DDP_BUCKET_BYTES = 25 * 2**20
BACKWARD_SHARE = 2 / 3   # of the compute time: the window in which gradients can be communicated


@dataclass
class Memory:
    """Bytes per GPU."""
    weights: float
    gradients: float
    optimizer: float
    ema: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations


def memory_per_gpu(num_params: int, strategy: str, world: int, precision: str = "mixed",
                   activations: float = 0.0, ema: bool = True) -> Memory:
    """The ZeRO accounting above for `num_params` parameters on `world` ranks."""
    check_strategy(strategy)
    if precision not in PRECISION_BYTES:
        raise ValueError(f"unknown precision {precision!r}; valid: {list(PRECISION_BYTES)}")
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    sharded = _SHARDED[strategy]
    w, g, o = (b * num_params / (world if s else 1) for b, s in zip(PRECISION_BYTES[precision], sharded))
    ema_bytes = 4 * num_params / (world if strategy in ("zero2", "zero3") else 1) if ema else 0.0
    return Memory(w, g, o, ema_bytes, activations)


@dataclass
class Collective:
    kind: str           # all_reduce | all_gather | reduce_scatter
    bytes: float        # the full (unsharded) size of what is communicated, e.g. all gradients
    pieces: int         # separate collectives it is split into (DDP buckets, FSDP2 blocks)
    repeats: int        # times per optimizer step (FSDP2: once per micro-batch)
    overlappable: bool  # issued during the backward pass
    group: str = "dp"   # the ranks it runs over: the data-parallel (dp) or tensor-parallel (tp) group
    what: str = ""      # what is communicated, for the table


def collectives_per_step(num_params: int, strategy: str, precision: str = "mixed", grad_accum: int = 1,
                         units: int = 1) -> list[Collective]:
    """The collectives of one optimizer step (see the module docstring); `units`: the
    number of FSDP2-wrapped blocks (one collective each)."""
    check_strategy(strategy)
    wb, gb, _ = PRECISION_BYTES[precision]
    grads, weights = gb * num_params, wb * num_params
    if strategy in ("ddp", "zero1"):
        out = [Collective("all_reduce", grads, max(1, math.ceil(grads / DDP_BUCKET_BYTES)), 1, True,
                          what="gradients")]
        if strategy == "zero1":
            out.append(Collective("all_gather", weights, 1, 1, False, what="updated weight shards"))
        return out
    out = [Collective("all_gather", weights, units, grad_accum, False, what="weights (forward)")]
    if strategy == "zero3":  # the weights were freed after forward: gathered again for backward
        out.append(Collective("all_gather", weights, units, grad_accum, True, what="weights (backward)"))
    out.append(Collective("reduce_scatter", grads, units, grad_accum, True, what="gradients"))
    return out


def ring_volume(c: Collective, world: int) -> float:
    """Bytes each rank sends (= receives) for `c` per step in a ring: (N - 1)/N of the
    data for all-gather and reduce-scatter, twice that for all-reduce."""
    factor = 2 if c.kind == "all_reduce" else 1
    return c.repeats * factor * (world - 1) / world * c.bytes


def ring_time(c: Collective, world: int, bandwidth_gbs: float, latency_us: float) -> float:
    """Seconds for `c` per step: N - 1 hops per phase (two phases for all-reduce), each
    paying the latency once per piece, plus the volume at the bandwidth."""
    if world == 1:
        return 0.0
    phases = 2 if c.kind == "all_reduce" else 1
    hops = c.repeats * c.pieces * phases * (world - 1)
    return hops * latency_us * 1e-6 + ring_volume(c, world) / (bandwidth_gbs * 1e9)


@dataclass
class Plan:
    strategy: str
    world: int
    precision: str
    num_params: int
    memory: Memory
    comm_bytes: float          # per GPU per optimizer step
    comm_seconds: float
    compute_seconds: float | None
    step_seconds: float | None
    efficiency: float | None
    overlap: bool

    def as_dict(self) -> dict:
        out = asdict(self)
        out["memory"] = {**asdict(self.memory), "total": self.memory.total}
        return out


def plan(num_params: int, strategy: str, world: int, *, precision: str = "mixed", activations: float = 0.0,
         grad_accum: int = 1, units: int = 1, compute_seconds: float | None = None,
         bandwidth_gbs: float = LINKS["nvlink"][0], latency_us: float = LINKS["nvlink"][1],
         overlap: bool = True, ema: bool = True) -> Plan:
    """Memory, communication and (given a measured one-device step) time of one step."""
    memory = memory_per_gpu(num_params, strategy, world, precision, activations, ema)
    colls = collectives_per_step(num_params, strategy, precision, grad_accum, units)
    volume = sum(ring_volume(c, world) for c in colls)
    hidden_window = BACKWARD_SHARE * compute_seconds if (overlap and compute_seconds) else 0.0
    t_overlappable = sum(ring_time(c, world, bandwidth_gbs, latency_us) for c in colls if c.overlappable)
    t_exposed = sum(ring_time(c, world, bandwidth_gbs, latency_us) for c in colls if not c.overlappable)
    comm = t_overlappable + t_exposed
    step = eff = None
    if compute_seconds is not None:
        step = compute_seconds + t_exposed + max(0.0, t_overlappable - hidden_window)
        eff = compute_seconds / step
    return Plan(strategy, world, precision, num_params, memory, volume, comm, compute_seconds, step, eff, overlap)
