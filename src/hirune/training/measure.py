"""What `hirune plan` measures of a run on this machine: its parameters, its FSDP2 units,
the activation bytes autograd saves between forward and backward at the per-GPU
micro-batch (with saved-tensor hooks, per block, so that recomputation adds the one block
recomputed at a time), the wall time of an optimizer step, and, on a GPU, the peak memory
of a real step against the planner's estimate (`distributed.planner`)."""

from __future__ import annotations

from ..distributed.planner import memory_per_gpu
from ..families import Batch
from .trainer import Trainer


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

    data, labels = run.training_data()
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

    draw = run.family.draw(n, run.noise_rng)
    batch = Batch(data[idx], labels[idx] if labels is not None else None, idx)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with run.autocast():  # the training step's autocast
                loss = run.family.loss(run.forward, batch, draw, run.step).loss
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

    from ..models import blocks

    cfg = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum)
    run = Trainer(cfg, distributed=False)
    kept = activation_bytes(run, micro_batch)
    if cfg.recompute:  # the backward pass recomputes one block at a time: add the largest
        kept += max(saved_bytes(Trainer(dataclasses.replace(cfg, recompute=False), distributed=False), micro_batch)[1])
    out = {"params": sum(p.numel() for p in run.model.parameters()), "units": len(blocks(run.model)) + 1,
           "micro_batch": micro_batch, "device": str(run.device), "recompute": cfg.recompute,
           "activation_bytes": kept, "step_seconds": None}
    if time_step:
        data, labels = run.training_data()
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

    if not torch.cuda.is_available():
        raise ValueError("--measure compares against torch.cuda.max_memory_allocated and needs a CUDA GPU; "
                         "none is visible here")
    cfg = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum, device="cuda")
    m = measure(cfg, micro_batch, time_step=False)
    run = Trainer(cfg, distributed=False)
    data, labels = run.training_data()
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
