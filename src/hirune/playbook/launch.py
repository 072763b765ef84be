"""Start N gloo processes on this machine, run one function on each, collect what they return.

    results = launch(fn, world=3, arg=...)    # [fn(rank=0, world=3, arg=...), ..., fn(rank=2, ...)]

torch.multiprocessing starts the processes (forked from a server process that imported torch once,
so `fn` must be a module-level function, importable by name); they meet through a file store in a fresh temporary folder
(no port to choose, none to collide with) and join one gloo process group.  Each rank writes its
result with torch.save into that folder; the parent reads them back in rank order.  A rank that
raises makes `launch` raise with that rank's traceback.

This is what `hirune playbook collectives` and the others use, so they need no torchrun; hirune's
trainers are started by torchrun instead (`distributed/runtime.py`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch


def _worker(rank: int, fn: Callable, world: int, folder: str, kwargs: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)   # N processes share the cores
    store = dist.FileStore(os.path.join(folder, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        result = fn(rank=rank, world=world, **kwargs)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()   # no rank leaves while a peer may still talk to it
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, world: int, **kwargs) -> list:
    """[fn(rank=r, world=world, **kwargs) for r in range(world)], each on its own gloo process."""
    import torch.multiprocessing as mp

    if world < 1:
        raise ValueError(f"world={world}: need at least one process")
    # forkserver: one clean server process imports torch once and forks every rank from it (a
    # spawned rank would import torch anew, seconds each; forking this process would copy its threads)
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["torch", "torch.distributed", "torch.nn.parallel", "torch.distributed.optim", __name__])
    with tempfile.TemporaryDirectory(prefix="hirune-playbook-") as folder:
        mp.start_processes(_worker, args=(fn, world, folder, kwargs), nprocs=world, join=True,
                           start_method="forkserver")
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(world)]
