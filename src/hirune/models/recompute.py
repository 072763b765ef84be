"""Activation recomputation ("gradient checkpointing", Chen et al. 2016) per block.

Backpropagation needs the activations of the forward pass; by default autograd keeps
every one of them until the backward pass reaches it, so activation memory grows with
depth x batch.  With recomputation each block keeps only its input: its inner
activations are dropped after the forward pass and recomputed, block by block, when the
backward pass needs them.  Memory falls from the sum over blocks to about one block
plus the block inputs, for about one extra forward pass of compute (~1/3 more per step).

`recompute_blocks(model)` makes every block of `models.blocks(model)` (UNet steps, MLP
blocks, DiT / U-ViT blocks, flow levels) recompute itself, with PyTorch's non-reentrant
`torch.utils.checkpoint`, which works under DDP and FSDP2 and restores the RNG state so
dropout draws the same mask twice (the gradients are exactly those of the plain model).
Turned on by `TrainConfig.recompute`; the state dict is unchanged.

Selective recomputation (Korthikanti et al. 2022, sec. 5) keeps everything but the core of
attention, softmax(q k^T / sqrt(d)) v: where the scores are materialised that core holds
the activations that grow with the square of the sequence for little compute, so
recomputing it alone saves most of that memory for a few percent of time.
`recompute_attention(model)` turns it on in every token attention (`hirune.nn.attention.attend`;
`TrainConfig.recompute_attention`).  With SDPA's fused kernels (flash / memory-efficient)
nothing quadratic is saved in the first place, and the saving is the attention's output
and log-sum-exp only: `hirune playbook recompute` measures both.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import blocks


def recompute_blocks(model: nn.Module) -> int:
    """Make every block of `model` recompute its activations in the backward pass (when
    gradients are enabled).  Returns the number of blocks wrapped."""
    units = blocks(model)
    for unit in units:
        if getattr(unit, "_hirune_recompute", False):
            continue
        forward = unit.forward

        @functools.wraps(forward)
        def recomputed(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        unit.forward = recomputed  # an instance attribute: nn.Module.__call__ runs it, hooks included
        unit._hirune_recompute = True
    return len(units)


def recompute_attention(model: nn.Module) -> int:
    """Selective recomputation: every token attention of `model` (`nn.Attention`,
    `nn.CrossAttention`: the modules with a `recompute_scores` switch) recomputes its core in
    the backward pass.  Returns the number of attention modules switched."""
    switched = [m for m in model.modules() if hasattr(m, "recompute_scores")]
    for m in switched:
        m.recompute_scores = True
    return len(switched)


@contextmanager
def blocks_recomputed(model: nn.Module):
    """`recompute_blocks(model)` for the duration of the block; afterwards the blocks it wrapped
    are plain again (those that recomputed before stay as they were).  For measuring a model
    with and without recomputation (`training.measure.trace`)."""
    before = {id(u) for u in blocks(model) if getattr(u, "_hirune_recompute", False)}
    recompute_blocks(model)
    try:
        yield model
    finally:
        for unit in blocks(model):
            if id(unit) not in before:  # the instance attributes recompute_blocks set go
                vars(unit).pop("forward", None)
                vars(unit).pop("_hirune_recompute", None)


@contextmanager
def attention_recomputed(model: nn.Module):
    """`recompute_attention(model)` for the duration of the block, each switch restored afterwards."""
    switched = [m for m in model.modules() if hasattr(m, "recompute_scores")]
    before = [m.recompute_scores for m in switched]
    recompute_attention(model)
    try:
        yield model
    finally:
        for m, value in zip(switched, before):
            m.recompute_scores = value
