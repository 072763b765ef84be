"""Tensor and sequence parallelism on PyTorch's DTensor, and the 2-D (dp, tp) mesh.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, sec. 3) splits each transformer block
over the `tp` ranks of a group: attention by heads (q, k, v column-wise, the output
projection row-wise) and the MLP column-wise then row-wise, so each block needs one
all-reduce in its attention and one in its MLP, forward and backward.  Weights, gradients,
optimizer states and the activations inside attention and the MLP fall to 1 / tp per rank.

Sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2) splits what tensor parallelism
leaves whole, the residual stream between blocks and the per-token modules on it (the
LayerNorms), over the tokens: each rank holds 1 / tp of the tokens there; the all-reduce
becomes a reduce-scatter onto the tokens and an all-gather before the next split region,
the same bytes.  The per-token modules' parameters see only the rank's tokens, so their
gradients are partial sums that must be added over the group (`finish_gradients`): without
that sum every rank trains them on its own tokens and the replicas drift apart (the fault
tests/distributed/test_tensor_parallel.py must catch).

What splits is the model's own declaration, `model.tensor_parallel_plan(tp, sp)`
(`hirune.nn.parallel`); here each kind becomes one of PyTorch's styles
(`torch.distributed.tensor.parallel`: ColwiseParallel, RowwiseParallel, SequenceParallel)
or a hook that changes the layout of a block's input or output.  Dropout inside a split
region draws its mask for the whole tensor and keeps the rank's part (`head_dropout`,
`nn.parallel.keep_mask`: DALL-E's attention), so the masks do not depend on the layout; DiT
and U-ViT have no dropout.

The mesh: `world size = dp x tp` ranks as a 2-D `DeviceMesh` ("dp", "tp"), tp the inner
(fastest) dimension, so a tensor-parallel group is `tp` consecutive ranks (one node's GPUs
on NVLink).  Data parallelism (DDP or FSDP2) runs over "dp": every rank of a tp group reads
the same examples.
"""

from __future__ import annotations

import torch
from torch import nn

from .runtime import World


def check_grid(size: int, tp: int) -> None:
    """ValueError unless `size` processes form a dp x tp grid (tp divides them); where a rank sits
    on it is `World.dp_rank` / `World.tp_rank`."""
    if tp < 1:
        raise ValueError(f"tp={tp} must be a positive integer")
    if tp > 1 and size == 1:
        raise ValueError(f"tp={tp} splits each block over {tp} processes, and this is one process: run it with "
                         f"`hirune train ... --nproc N` or under torchrun, N a multiple of {tp} (or tp=1)")
    if size % tp:
        raise ValueError(f"tp={tp} does not divide the {size} processes; the processes form a dp x tp grid: "
                         f"valid tp: {[d for d in range(1, size + 1) if size % d == 0]}")


def models_with_plan() -> list[str]:
    """The model kinds (hirune.models.MODELS) that declare a tensor-parallel plan."""
    from ..models import MODELS

    return sorted(kind for kind, (cls, _, _) in MODELS.items() if hasattr(cls, "tensor_parallel_plan"))


def check_plan(model_kind: str, tp: int, sp: bool) -> None:
    """ValueError for tp > 1 on a model without a plan (naming those with one), or sp without tp."""
    if sp and tp < 2:
        raise ValueError(f"sp=true shards the sequence over the tensor-parallel ranks and needs tp >= 2, got tp={tp}")
    if tp > 1 and model_kind not in models_with_plan():
        raise ValueError(f"tp={tp}: model {model_kind!r} has no tensor-parallel plan; models with one: "
                         f"{models_with_plan()}")


def make_mesh(world: World, device: torch.device, tp: int):
    """The 2-D ("dp", "tp") DeviceMesh over every rank (`check_grid` checks the sizes)."""
    from torch.distributed.device_mesh import init_device_mesh

    check_grid(world.size, tp)
    return init_device_mesh(device.type, (world.size // tp, tp), mesh_dim_names=("dp", "tp"))


def _styles(kind: str, sp: bool):
    """PyTorch's ParallelStyle for a plan kind, or None (kinds handled by hooks, or nothing to do)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    if kind == "colwise":
        return ColwiseParallel()
    if kind == "rowwise":  # partial sums: all-reduced, or under sp reduce-scattered onto the tokens
        return RowwiseParallel(output_layouts=Shard(1)) if sp else RowwiseParallel()
    if kind == "rowwise_whole":
        return RowwiseParallel()
    if kind == "colwise_gather":  # under sp the output meets the rank's tokens: see _partial_gradient
        return ColwiseParallel(output_layouts=Replicate(), use_local_output=not sp)
    if kind == "heads":  # a per-head module on dim 1 of (B, heads, N, d): the heads play the tokens' part
        return SequenceParallel(sequence_dim=1, use_local_output=True)
    if kind == "tokens":
        return SequenceParallel(sequence_dim=1, use_local_output=True) if sp else None
    return None


def _cut_tokens(tp_mesh):
    """Pre-hook: the first argument (B, N, D), whole on every rank, cut to the rank's N / tp tokens
    (no communication; the backward all-gathers the tokens' gradients)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    def hook(module, args, kwargs):
        x = DTensor.from_local(args[0], tp_mesh, [Replicate()], run_check=False)
        return (x.redistribute(tp_mesh, [Shard(1)]).to_local(), *args[1:]), kwargs
    return hook


def _gather_tokens_output(tp_mesh):
    """Forward hook: the output, the rank's tokens, all-gathered whole (backward: each rank keeps
    the gradient of its own tokens)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    def hook(module, args, output):
        return DTensor.from_local(output, tp_mesh, [Shard(1)], run_check=False).redistribute(
            tp_mesh, [Replicate()]).to_local()
    return hook


def _shared_input(tp_mesh):
    """Pre-hook of a split region: its first argument, whole on every rank, as one replicated
    DTensor the column-wise layers share.  Each layer's input gradient is a partial sum (its
    heads' or columns' part); autograd adds them into this one tensor, and its backward
    all-reduces the sum once -- Megatron's f -- instead of once per layer (q, k and v: three)."""
    from torch.distributed.tensor import DTensor, Replicate

    def hook(module, args, kwargs):
        if isinstance(args[0], DTensor):
            return None
        return (DTensor.from_local(args[0], tp_mesh, [Replicate()], run_check=False), *args[1:]), kwargs
    return hook


def _gather_tokens_input(tp_mesh):
    """Pre-hook of a split region under sp: the first argument, the rank's tokens, all-gathered
    into a replicated DTensor for the column-wise layers (its gradient, partial on each rank,
    is reduce-scattered back onto the tokens by DTensor's autograd)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    def hook(module, args, kwargs):
        x = DTensor.from_local(args[0], tp_mesh, [Shard(1)], run_check=False)
        return (x.redistribute(tp_mesh, [Replicate()]), *args[1:]), kwargs
    return hook


def _partial_gradient(module, args, output):
    """Forward hook of a "colwise_gather" module under sp: its output is whole on every rank but is
    applied to the rank's tokens only (DiT's shift, scale and gate), so the gradient each rank
    sends back is a partial sum over the tokens; marked Partial, DTensor's backward adds the
    ranks' parts (reduce-scatter onto the weights' shards) instead of taking one as the whole."""
    from torch.distributed.tensor import Partial

    return output.to_local(grad_placements=[Partial()])


def parallelize(model: nn.Module, tp_mesh, sp: bool = False, sum_token_grads: bool = True) -> nn.Module:
    """Apply `model.tensor_parallel_plan(tp, sp)` on the 1-D `tp_mesh`, in place; returns the model.

    sum_token_grads=False leaves the "tokens" modules (the norms under sp) as plain replicated
    modules on each rank's tokens, without the sum of their gradients over the group: the
    broken variant the parity tests must catch, kept here so that they can."""
    from torch.distributed.tensor.parallel import parallelize_module

    from ..nn.parallel import KINDS

    tp = tp_mesh.size()
    plan = model.tensor_parallel_plan(tp, sp)
    modules = dict(model.named_modules())
    for path, kind in plan:
        if path not in modules:
            raise ValueError(f"the tensor-parallel plan of {type(model).__name__} names {path!r}, which it lacks")
        if kind not in KINDS:
            raise ValueError(f"the tensor-parallel plan of {type(model).__name__} gives {path!r} the kind {kind!r}; "
                             f"valid: {list(KINDS)}")
        module = modules[path]
        if kind == "sequence_start" and sp:
            module.register_forward_pre_hook(_cut_tokens(tp_mesh), with_kwargs=True)
        elif kind == "sequence_end" and sp:
            module.register_forward_hook(_gather_tokens_output(tp_mesh))
        elif kind == "region" and sp:
            module.register_forward_pre_hook(_gather_tokens_input(tp_mesh), with_kwargs=True)
        elif kind in ("region", "region_whole"):
            module.register_forward_pre_hook(_shared_input(tp_mesh), with_kwargs=True)
        elif kind == "tokens" and not sum_token_grads:
            continue
        elif kind == "head_dropout":  # the heads this rank holds: the tp_rank-th of tp blocks
            module.dropout_heads = (tp_mesh.get_local_rank(), tp)
        else:
            style = _styles(kind, sp)
            if style is not None:
                parallelize_module(module, tp_mesh, style)
            if kind == "colwise_gather" and sp:
                module.register_forward_hook(_partial_gradient)
    return model


@torch.no_grad()
def finish_gradients(model: nn.Module) -> None:
    """Every DTensor gradient in its parameter's placements: the partial sums of the per-head
    and per-token modules' gradients (Partial) are all-reduced over the tensor-parallel group.
    A no-op for a model without DTensor parameters; FSDP2 reduces its own."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        g = p.grad
        if isinstance(g, DTensor) and isinstance(p, DTensor) and tuple(g.placements) != tuple(p.placements):
            p.grad = g.redistribute(p.device_mesh, p.placements)


def _replicas(t, world_size: int) -> int:
    """How many ranks hold the same local piece of `t`: all of them for a plain tensor; for a
    DTensor, the ranks outside its mesh times its replicated mesh dimensions."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return world_size
    mesh = t.device_mesh
    copies = world_size // mesh.size()
    for dim, placement in enumerate(t.placements):
        if placement.is_replicate():
            copies *= mesh.size(dim)
        elif placement.is_partial():
            raise ValueError("a gradient is still a partial sum: call finish_gradients first")
    return copies


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float, world: World) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for a model whose gradients mix plain tensors (replicated)
    and DTensors on different meshes (tensor-parallel shards, FSDP2 shards on the dp mesh, both):
    each rank sums the squares of its local pieces, each divided by how many ranks hold that
    piece, and one all-reduce over the world gives the global squared norm.  Returns the norm
    (float32) and scales every gradient by min(1, max_norm / (norm + 1e-6)), as torch does."""
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    pieces = [g.to_local() if hasattr(g, "to_local") else g for g in grads]   # this rank's, in place
    device = grads[0].device if grads else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g, piece in zip(grads, pieces):
        total += piece.detach().double().square().sum() / _replicas(g, world.size)
    if world.distributed:
        dist.all_reduce(total)
    norm = total.sqrt().float()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for piece in pieces:
        piece.mul_(scale.to(piece.dtype))
    return norm
