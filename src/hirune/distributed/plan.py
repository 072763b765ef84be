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
one forward of the real model at the per-GPU micro-batch (`measure_activations`).

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


def collectives_per_step(num_params: int, strategy: str, precision: str = "mixed", grad_accum: int = 1,
                         units: int = 1) -> list[Collective]:
    """The collectives of one optimizer step (see the module docstring); `units`: the
    number of FSDP2-wrapped blocks (one collective each)."""
    check_strategy(strategy)
    wb, gb, _ = PRECISION_BYTES[precision]
    grads, weights = gb * num_params, wb * num_params
    if strategy in ("ddp", "zero1"):
        out = [Collective("all_reduce", grads, max(1, math.ceil(grads / DDP_BUCKET_BYTES)), 1, True)]
        if strategy == "zero1":
            out.append(Collective("all_gather", weights, 1, 1, False))
        return out
    out = [Collective("all_gather", weights, units, grad_accum, False)]
    if strategy == "zero3":  # the weights were freed after forward: gathered again for backward
        out.append(Collective("all_gather", weights, units, grad_accum, True))
    out.append(Collective("reduce_scatter", grads, units, grad_accum, True))
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


def activation_bytes(run, micro_batch: int) -> int:
    """Bytes autograd keeps for the backward pass of one micro-batch: every tensor saved
    during a forward and loss of the real model, counted once per storage (views share),
    the weights themselves excepted (they are counted as weights).  With recomputation
    (`TrainConfig.recompute`) that is what stays between forward and backward: the block
    inputs and whatever lies outside the blocks."""
    return saved_bytes(run, micro_batch)[0]


def saved_bytes(run, micro_batch: int) -> tuple[int, list[int]]:
    """(activation_bytes, the part of it saved inside each block of `models.blocks`)."""
    import torch

    from ..models import blocks

    data, labels = run.batch_source()
    n = min(micro_batch, len(data))
    idx = torch.arange(n, device=data.device) % len(data)
    seen: dict[tuple, tuple[int, int]] = {}   # storage -> (bytes, index of the block that saved it or -1)
    weights = {p.untyped_storage().data_ptr() for p in run.model.parameters()}  # counted as weights
    units, inside = blocks(run.model), []

    def enter(i):
        return lambda module, args: inside.append(i)   # returns None: the input is unchanged

    def leave(module, args, output) -> None:           # None: the output is unchanged
        inside.pop()

    hooks = [u.register_forward_pre_hook(enter(i)) for i, u in enumerate(units)]
    hooks += [u.register_forward_hook(leave) for u in units]

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            key = (storage.data_ptr(), t.device.type)
            if storage.data_ptr() not in weights and key not in seen:
                seen[key] = (storage.nbytes(), inside[-1] if inside else -1)
        return t

    d = {k: v[:n] for k, v in run.draw(n, run.sample_shape).items()}
    y = labels[idx] if labels is not None and run.cfg.class_conditional else None
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with run.autocast():  # the training step's autocast
                loss = run.loss(data[idx], y, d, idx).loss
    finally:
        for h in hooks:
            h.remove()
    del loss
    scale = micro_batch / n
    per_block = [0] * len(units)
    for nbytes, block in seen.values():
        if block >= 0:
            per_block[block] += nbytes
    return int(sum(b for b, _ in seen.values()) * scale), [int(b * scale) for b in per_block]


def measure(cfg, micro_batch: int, time_step: bool = True, repeats: int = 3) -> dict:
    """Parameters, FSDP2 units, activation bytes at `micro_batch` and (time_step) the mean
    wall time of one optimizer step of micro_batch x grad_accum examples on this machine."""
    import dataclasses
    import time

    import torch

    from ..trainer import Run
    from ..models import blocks

    cfg = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum)
    run = Run(cfg, distributed=False)
    kept = activation_bytes(run, micro_batch)
    if cfg.recompute:  # the backward pass recomputes one block at a time: add the largest
        kept += max(saved_bytes(Run(dataclasses.replace(cfg, recompute=False), distributed=False), micro_batch)[1])
    out = {"params": sum(p.numel() for p in run.model.parameters()), "units": len(blocks(run.model)) + 1,
           "micro_batch": micro_batch, "device": str(run.device), "recompute": cfg.recompute,
           "activation_bytes": kept, "step_seconds": None}
    if time_step:
        data, labels = run.batch_source()
        run.model.train()
        run.train_step(data, labels)  # warm-up
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            run.train_step(data, labels)
        sync()
        out["step_seconds"] = (time.perf_counter() - start) / repeats
    return out


def measure_peak_memory(cfg, micro_batch: int) -> dict:
    """`hirune plan --measure` (CUDA only): one process trains two optimizer steps of the
    per-GPU micro-batch and reports torch.cuda.max_memory_allocated beside the planner's
    one-GPU estimate of what hirune keeps there: float32 weights, gradients and AdamW
    state (4 + 4 + 8 bytes a parameter), the float32 EMA (4), the bf16 copies autocast
    makes of the weights (2, under bf16) and the measured activations."""
    import dataclasses

    import torch

    from ..trainer import Run

    if not torch.cuda.is_available():
        raise ValueError("--measure compares against torch.cuda.max_memory_allocated and needs a CUDA GPU; "
                         "none is visible here")
    cfg = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum, device="cuda")
    m = measure(cfg, micro_batch, time_step=False)
    run = Run(cfg, distributed=False)
    data, labels = run.batch_source()
    run.model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the first step creates AdamW's state
        run.train_step(data, labels)
    torch.cuda.synchronize()
    # the training set sits on the GPU too; the planner does not count it
    dataset = sum(t.numel() * t.element_size() for t in (data, labels) if t is not None and t.is_cuda)
    peak = torch.cuda.max_memory_allocated() - dataset
    mem = memory_per_gpu(m["params"], "ddp", 1, "fp32", m["activation_bytes"])
    autocast_copies = 2 * m["params"] if run.dtype is not None else 0
    estimate = mem.total + autocast_copies
    return {"measured_bytes": peak, "estimated_bytes": estimate, "ratio": estimate / peak,
            "within_15_percent": abs(estimate / peak - 1) <= 0.15, **m}
