"""ZeRO stage 1 written by hand, against torch's ZeroRedundancyOptimizer.

Mixed-precision-free AdamW keeps 8 bytes of state a parameter (exp_avg, exp_avg_sq in float32),
twice the weights.  ZeRO-1 (Rajbhandari et al. 2020, sec. 5.1: P_os) partitions that state: the
parameters are split into N groups, rank r keeps AdamW state only for group r and updates only
those parameters; afterwards every rank receives the updated parameters of the other groups:

    1. backward; all-reduce every gradient, / N            (as plain data parallelism)
    2. rank r: AdamW.step() over its own group only         state bytes: about 1/N of the whole
    3. for every parameter: broadcast it from its owner     every replica equal again

AdamW is elementwise, so stepping each group on its owner gives exactly the numbers one AdamW
over all parameters gives.  The groups are filled greedily, the largest parameter first into the
group with the fewest bytes so far (the rule ZeroRedundancyOptimizer also uses).  The ZeRO paper
reduce-scatters the gradients and all-gathers the parameters (the same bytes); torch's
ZeroRedundancyOptimizer, like this file, sits behind DDP's all-reduce and broadcasts.

A teaching implementation: hirune's `strategy=zero1` uses ZeroRedundancyOptimizer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .data_parallel import Blocking, Setup, Traffic, max_diff, outside_key_bias, parameters, train, worst
from .memory import optimizer_bytes


def partition(params: list[torch.Tensor], world: int) -> list[int]:
    """The owner rank of each parameter: largest first, into the group with the fewest bytes."""
    owner, load = [0] * len(params), [0] * world
    for i in sorted(range(len(params)), key=lambda i: -params[i].numel()):
        r = min(range(world), key=lambda r: load[r])
        owner[i] = r
        load[r] += params[i].numel() * params[i].element_size()
    return owner


class ZeRO1:
    """Gradients all-reduced, AdamW state and update for this rank's parameters only, then broadcasts."""

    def __init__(self, model: nn.Module, rank: int, world: int, **adamw):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rank, self.world = rank, world
        self.owner = partition(self.params, world)
        self.optimizer = torch.optim.AdamW([p for p, o in zip(self.params, self.owner) if o == rank], **adamw)
        self.reduce = Blocking(model, world)
        self.traffic = Traffic()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.reduce.finish()                 # 1. gradients averaged over the ranks
        self.optimizer.step()                # 2. this rank's group only
        self.broadcast()                     # 3. every group from its owner

    def broadcast(self) -> None:
        for p, owner in zip(self.params, self.owner):
            self.traffic.broadcast(p.data, src=owner)


def compare(rank: int, world: int, setup: Setup = Setup(), impl=ZeRO1) -> dict:
    """On one rank: DDP + ZeroRedundancyOptimizer, then `impl`, from the same start; the largest
    parameter difference after the steps, optimizer-state bytes on this rank, the traffic."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model, _ = setup.build()
    zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=setup.lr)
    train(DistributedDataParallel(model), zero, setup, rank, world)
    reference = parameters(model)
    theirs = optimizer_bytes(zero.optim)
    model, _ = setup.build()
    mine = impl(model, rank, world, lr=setup.lr)
    train(model, mine, setup, rank, world)
    params = parameters(model)
    whole = 8 * sum(p.numel() for p in model.parameters())   # AdamW's two moments on one process
    return {"param_diff": max_diff(params, reference), "worst": worst(params, reference),
            "param_diff_outside_key_bias": outside_key_bias(params, reference),
            "state_bytes": optimizer_bytes(mine.optimizer), "reference_state_bytes": theirs,
            "whole_state_bytes": whole, "owned": sum(o == rank for o in mine.owner),
            "all_reduce": {"calls": mine.reduce.traffic.calls / setup.steps,
                           "bytes": mine.reduce.traffic.bytes / setup.steps},
            "broadcast": {"calls": mine.traffic.calls / setup.steps, "bytes": mine.traffic.bytes / setup.steps}}


def failures(results: list[dict], tol: float = 1e-6) -> list[str]:
    """The ranks whose parameters differ from ZeroRedundancyOptimizer's by more than `tol`, or whose
    optimizer state is not the size of torch's partition."""
    out = []
    for rank, r in enumerate(results):
        if r["param_diff"] > tol:
            out.append(f"rank {rank}: parameters differ by {r['param_diff']:.2e} (worst {r['worst']})")
        if r["state_bytes"] != r["reference_state_bytes"]:
            out.append(f"rank {rank}: {r['state_bytes']} bytes of optimizer state, torch's partition keeps "
                       f"{r['reference_state_bytes']}")
    return out


def playbook(world: int = 2, steps: int = 3, layers: int = 2, hidden: int = 32, batch: int = 12):
    from .launch import launch
    from .report import Report

    results = launch(compare, world, setup=Setup(layers=layers, hidden=hidden, batch=batch, steps=steps))
    rows = [[r, res["owned"], res["state_bytes"], res["reference_state_bytes"],
             res["state_bytes"] / res["whole_state_bytes"], res["all_reduce"]["calls"], res["all_reduce"]["bytes"],
             res["broadcast"]["calls"], res["broadcast"]["bytes"], res["param_diff"],
             res["param_diff_outside_key_bias"]] for r, res in enumerate(results)]
    bad = failures(results)
    notes = [f"{world} gloo ranks, {steps} AdamW steps; state / whole: this rank's AdamW state over one process's "
             f"({results[0]['whole_state_bytes']} bytes), about 1/{world}",
             "collectives per step: all-reduce of every gradient, then a broadcast of every parameter from its owner",
             "equals ZeroRedundancyOptimizer within 1e-6 in every parameter on every rank" if not bad else
             "DIFFERS from ZeroRedundancyOptimizer (for N > 2: the key biases' rounding noise, see data_parallel's "
             "docstring and the column without them): " + "; ".join(bad)]
    return Report("zero1", "hand-written ZeRO-1 against torch's ZeroRedundancyOptimizer",
                  ["rank", "params owned", "state bytes", "torch's state bytes", "state / whole", "all-reduces",
                   "all-reduce bytes", "broadcasts", "broadcast bytes", "max |param diff|", "without key biases"],
                  rows, notes,
                  {"results": results}, lambda path: plot(results, path))


def plot(results: list[dict], path) -> None:
    from .report import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    ranks = range(len(results))
    ax.bar([r - 0.2 for r in ranks], [res["state_bytes"] / 1024 for res in results], 0.4, label="hand ZeRO-1")
    ax.bar([r + 0.2 for r in ranks], [res["reference_state_bytes"] / 1024 for res in results], 0.4,
           label="ZeroRedundancyOptimizer")
    ax.axhline(results[0]["whole_state_bytes"] / 1024, color="k", lw=0.8, label="AdamW on one process")
    ax.set_xticks(list(ranks), [f"rank {r}" for r in ranks])
    ax.set_ylabel("optimizer state, KiB")
    ax.legend(fontsize=7)
    ax.set_title("AdamW state per rank", fontsize=9)
    save(fig, path)
