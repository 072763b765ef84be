"""Data-parallel strategies, one config key, all PyTorch's own:

    ddp     DistributedDataParallel: gradients all-reduced in buckets that overlap the
            backward pass; `no_sync` on all but the last micro-batch of an accumulation
    zero1   ddp + ZeroRedundancyOptimizer: each rank keeps and updates 1/N of the AdamW
            state, then the updated weights are broadcast
    zero2   FSDP2 `fully_shard` per block (`models.blocks`) with reshard_after_forward=False: weights stay
            gathered from forward to backward; gradients and optimizer states sharded
    zero3   FSDP2 with reshard_after_forward=True: weights are gathered per block for
            forward and again for backward, so everything is sharded at rest

On a single process every strategy is the plain module (nothing to shard or reduce).

Gradient averaging: each rank's loss is the mean over its own micro-batch, so the
gradient of the global mean is the *average* of the ranks' gradients.  FSDP2 asks the
backend for ReduceOp.AVG, which gloo has been reported to treat as a sum (pytorch issue
162338); on gloo hirune therefore makes FSDP2 reduce with SUM and divide by the world
size itself (`set_force_sum_reduction_for_comms`), and the parity tests compare every
strategy against one process with the whole batch.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ..models import blocks
from .runtime import World

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
FSDP_STRATEGIES = ("zero2", "zero3")


def is_sharded(world: World, strategy: str) -> bool:
    """Whether a run keeps its weights as DTensor shards: FSDP2 (zero2 / zero3 on several
    processes) or tensor parallelism (tp > 1)."""
    return world.distributed and (strategy in FSDP_STRATEGIES or world.tp > 1)


def check_composition(world: World, strategy: str) -> None:
    """Tensor parallelism composes with data parallelism through FSDP2 on the 2-D mesh (as
    PyTorch composes them); ValueError for ddp / zero1 over several tensor-parallel groups."""
    if world.tp > 1 and world.dp_size > 1 and strategy not in FSDP_STRATEGIES:
        raise ValueError(f"tp={world.tp} on {world.size} processes makes {world.dp_size} data-parallel replicas, which "
                         f"run on FSDP2 over the mesh's dp dimension: strategy={strategy!r} is not valid there; valid: "
                         f"{list(FSDP_STRATEGIES)} (or as many processes as tp, with any strategy)")


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {list(STRATEGIES)}")


def wrap(model: nn.Module, strategy: str, world: World, device: torch.device,
         param_dtype: torch.dtype | None = None, sp: bool = False) -> nn.Module:
    """The module to run forward and backward through.  DDP returns a wrapper (the model
    itself stays the plain module for state dicts, EMA and sampling); FSDP2 shards the
    model in place and returns it.

    param_dtype (FSDP2 only; bf16 training): the mixed-precision policy.  The sharded
    weights, their gradients and AdamW stay float32; each block's weights are all-gathered
    in `param_dtype` (half the traffic and half the memory of the gathered copies) and
    gradients are reduce-scattered in float32.  Inputs are not cast (cast_forward_inputs
    False): autocast decides op by op, and t stays float32 (bf16 rounds 999 to 1000).

    world.tp > 1: the model is first split over each tensor-parallel group (its plan,
    `tensor_parallel.parallelize`, with sequence parallelism if `sp`), then FSDP2 shards it
    over the mesh's dp dimension (zero2 / zero3; with a single tp group, nothing more)."""
    check_strategy(strategy)
    if not world.distributed:
        return model
    mesh = None
    if world.tp > 1:
        from .tensor_parallel import make_mesh, parallelize

        check_composition(world, strategy)
        mesh = make_mesh(world, device, world.tp)
        parallelize(model, mesh["tp"], sp=sp)
        if world.dp_size == 1:
            return model
    if strategy in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp_mesh = init_device_mesh(device.type, (world.size,)) if mesh is None else mesh["dp"]
    options = {"mesh": dp_mesh, "reshard_after_forward": strategy == "zero3"}
    if param_dtype is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                    cast_forward_inputs=False)
    for unit in blocks(model):
        fully_shard(unit, **options)
    fully_shard(model, **options)
    if world.backend == "gloo":
        model.set_force_sum_reduction_for_comms(True)  # SUM, then divide: gloo's AVG is not an average
    return model


def make_optimizer(model: nn.Module, strategy: str, world: World, device: torch.device, lr: float,
                   weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over every tensor: on a CPU 25 -> 4 ms a step for the pixel
    UNet's 268 tensors); under zero1 wrapped by ZeroRedundancyOptimizer (with tp > 1 the only
    data-parallel replica is the tp group itself: plain AdamW on the shards)."""
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if strategy == "zero1" and world.distributed and world.tp == 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=lr,
                                       weight_decay=weight_decay, betas=betas, **fused)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas, **fused)


def sync_gradients(wrapped: nn.Module, strategy: str, last: bool):
    """Context for one micro-batch's backward: DDP skips its all-reduce (`no_sync`) on all
    but the last micro-batch; FSDP2 reduce-scatters every micro-batch (that is what keeps
    its gradients sharded)."""
    if not last and strategy in ("ddp", "zero1") and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    return nullcontext()


def clip_gradients(model: nn.Module, max_norm: float, world: World) -> torch.Tensor:
    """Clip the gradients to `max_norm` in global 2-norm and return the norm: torch's
    clip_grad_norm_, or under tensor parallelism (gradients that mix plain tensors and
    DTensors on several meshes) first the sums of the partial gradients, then the norm over
    every rank's pieces (`tensor_parallel.finish_gradients`, `tensor_parallel.clip_grad_norm`)."""
    if world.tp > 1:
        from .tensor_parallel import clip_grad_norm, finish_gradients

        finish_gradients(model)
        return clip_grad_norm(list(model.parameters()), max_norm, world)
    return grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2: its full value."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@contextmanager
def gathered(model: nn.Module):
    """Every FSDP2-sharded part of `model` unsharded (whole weights on every rank) for the
    duration, e.g. to sample through methods other than forward (a flow's inverse);
    every rank must enter it.  A no-op for unsharded models."""
    from torch.distributed.fsdp import FSDPModule

    parts = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in parts:
        m.unshard()
    try:
        yield model
    finally:
        for m in parts:
            m.reshard()
