"""Run by torchrun in tests/distributed/test_planner_tp.py (not collected by pytest):

    torchrun --standalone --nproc-per-node 2 tests/distributed/plan_worker.py OUT CASES_JSON

CASES_JSON: a list of {"name": ..., "preset": ..., "overrides": {...}}, each a config with tp
(and sp) set.  For each case every rank builds the real tensor-parallel run (`Trainer`),
then measures, independently of the planner's own code, what the planner predicts:

    params       the parameters this rank holds: sum of p.to_local().numel()
    saved        the bytes autograd saves in one forward and loss on this rank: every saved
                 tensor's local storage (DTensor and collective outputs unwrapped) once, the
                 weights' storages excepted
    collectives  every collective issued in the forward + loss, the backward and the
                 gradient clipping (where the partial gradients are summed): (op, phase,
                 full bytes), the full size being what the collective is over (an all-gather's
                 output, a reduce-scatter's input)

and writes them to OUT/<name>_rank<R>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils._python_dispatch import TorchDispatchMode

from hirune.distributed.runtime import leave
from hirune.distributed.strategy import clip_gradients
from hirune.families import Batch
from hirune.training import Trainer, preset_config


def local_tensors(t) -> list[torch.Tensor]:
    """The plain tensors under a tensor subclass (DTensor's local shard, a collective's output)."""
    if type(t) is torch.Tensor or not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [x for n in names if isinstance(getattr(t, n), torch.Tensor) for x in local_tensors(getattr(t, n))]


class Collectives(TorchDispatchMode):
    """Records the functional collectives DTensor issues and the c10d ones of plain calls."""

    def __init__(self):
        super().__init__()
        self.phase, self.log = "forward", []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        name = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else name
        kind = ("all_reduce" if name.startswith(("all_reduce", "allreduce")) else
                "all_gather" if name.startswith(("all_gather", "allgather")) else
                "reduce_scatter" if name.startswith(("reduce_scatter", "reducescatter")) else None)
        if kind is not None:
            first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
            nbytes = first.numel() * first.element_size()
            if name == "all_gather_into_tensor":
                nbytes *= args[1]       # (input, group_size, group): the full size is the output's
            self.log.append((kind, self.phase, nbytes))
        return func(*args, **(kwargs or {}))


def measure(case: dict) -> dict:
    cfg = preset_config(case["preset"], {**case["overrides"], "out": "/tmp/unused-plan-worker"})
    run = Trainer(cfg)
    params = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in run.model.parameters())
    weights = {x.untyped_storage().data_ptr() for p in run.model.parameters() for x in local_tensors(p.data)}
    data, labels = run.training_data()
    n = run.micro_batch
    idx = torch.arange(n)
    batch = Batch(data[idx], labels[idx] if labels is not None else None, idx)
    draw = run.family.draw(n, run.noise_rng)
    seen: dict[int, int] = {}
    alive = []   # every saved tensor held to the end: no address freed and reused meanwhile

    def pack(t):
        alive.append(t)
        for x in local_tensors(t):
            storage = x.untyped_storage()
            if storage.data_ptr() not in weights:
                seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    comms = Collectives()
    with comms:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with run.autocast():
                loss = run.family.loss(run.forward, batch, draw, run.step).loss
        comms.phase = "backward"
        loss.backward()
        comms.phase = "step"
        clip_gradients(run.model, 1e9, run.world)
    return {"params": params, "saved": sum(seen.values()), "micro_batch": n, "collectives": comms.log}


@record
def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    for case in cases:
        result = measure(case)
        rank = torch.distributed.get_rank()
        (out / f"{case['name']}_rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
    leave(0)
