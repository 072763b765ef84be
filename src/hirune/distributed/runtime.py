"""The process group, read from torchrun's environment.

`torchrun --nproc-per-node N -m hirune train ...` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous in their environment; `setup` joins them into
one process group (nccl on GPUs, gloo on CPUs) and pins each process to its GPU.  A plain
`hirune train` (no WORLD_SIZE) is a world of one and touches nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None   # None: no process group (a single process)
    tp: int = 1                  # ranks per tensor-parallel group (distributed.tensor_parallel)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes samples and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: the ranks that read different examples (size / tp)."""
        return self.size // self.tp

    @property
    def dp_rank(self) -> int:
        """Which slice of the batch this rank reads: the ranks of a tensor-parallel group (tp
        consecutive ranks) read the same one."""
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        """Which part of each split block this rank holds, within its tensor-parallel group."""
        return self.rank % self.tp


def from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


DEVICES = "auto, cpu, cuda, cuda:N"


def check_device(device: str) -> None:
    """A device a run can train on: auto (the GPU where there is one), cpu, cuda or cuda:N
    of the GPUs PyTorch sees; ValueError naming what is valid."""
    kind, colon, index = str(device).partition(":")
    if device not in ("auto", "cpu", "cuda") and not (kind == "cuda" and colon and index.isdigit()):
        raise ValueError(f"device={device!r} is not valid; valid: {DEVICES}")
    if kind != "cuda":
        return
    if not torch.cuda.is_available():
        why = " (this PyTorch is built for the CPU only)" if torch.version.cuda is None else ""
        raise ValueError(f"device={device!r} is not valid: no GPU is visible to PyTorch{why}; use device=cpu, "
                         "or device=auto for the GPU where there is one")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"device={device!r} is not valid: {count} GPUs are visible; valid: cuda:0 .. cuda:{count - 1}")


def setup(device: str = "auto", timeout_s: float = 600.0) -> tuple[World, torch.device]:
    """Join the process group torchrun prepared (if any) and choose this rank's device."""
    rank, size, local_rank = from_env()
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu", "cuda"):
        if size > 1:
            raise ValueError(f"device={device!r} with {size} processes: use device=auto, cuda or cpu "
                             "(each process takes the GPU of its LOCAL_RANK)")
        return World(), torch.device(device)
    if size == 1 and not dist.is_initialized():
        return World(), torch.device("cuda" if want_cuda else "cpu")
    if want_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs "
                               "are visible on this node")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if want_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if want_cuda else {}))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, backend), dev


def teardown(finished: bool = False) -> None:
    """Leave the process group.  After a finished run every rank first meets the others at a
    barrier, so no rank destroys its group (and its gloo threads) while a peer still talks to
    it: a rank that left early was seen to abort at exit ("terminate called without an active
    exception").  After an error there is no barrier (the peers may be gone)."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def leave(code: int | None) -> None:
    """End the process with `code`.  A torchrun worker (WORLD_SIZE set) flushes its output and
    leaves through os._exit, skipping the interpreter's teardown: after the process group is
    gone, C++ destructors of PyTorch's gloo / thread-pool threads were seen to abort a rank now
    and then under load ("terminate called without an active exception", SIGABRT), turning a
    finished run into a failed one.  Every file hirune writes is closed before this point."""
    if os.environ.get("WORLD_SIZE") is None:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def gather(world: World, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor concatenated over the data-parallel replicas in rank order (itself on one
    process): the ranks of a tensor-parallel group hold the same slice, which counts once."""
    if not world.distributed:
        return tensors
    out = []
    for x in tensors:
        parts = [torch.empty_like(x) for _ in range(world.size)]
        dist.all_gather(parts, x.contiguous())
        out.append(torch.cat(parts[::world.tp]))
    return tuple(out)


def mean(world: World, tensors: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks (SUM, then divide: gloo's AVG is unreliable); itself on one process."""
    if not world.distributed:
        return tensors
    dist.all_reduce(tensors)
    return tensors / world.size
