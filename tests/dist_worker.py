"""Run by torchrun in tests/distributed/test_distributed.py (not collected by pytest):

    torchrun --standalone --nproc-per-node N tests/dist_worker.py SCENARIO [hirune train args...]

SCENARIO: "train" (plain `hirune train`), "sum-grads" (FSDP2 left to sum the gradients
instead of averaging them: the fault the parity test must catch), "fail" (rank 1 raises
at step 2), "count-allreduce" (records how many gradient all-reduces DDP issues per
optimizer step into OUT/allreduce_rank<R>.json; "count-allreduce-without-no-sync": the
same with DDP's no_sync disabled, the variant the count must reject), "stale-rank-1"
(rank 1 resumes from the run's oldest checkpoint instead of its latest, as a node with a
stale copy of the run directory would), "record-dtypes" (writes the dtype of the first
block's weight as forward sees it and as it is stored, to OUT/dtypes_rank<R>.json),
"gan-local-weight" (each rank computes VQGAN's adaptive weight from its own examples'
gradients, not averaged over the ranks: the fault the GAN parity test must catch),
"save-after-load" (a resumed run writes its checkpoint again at once, in today's layout:
tests/test_golden.py's check of its hashes of checkpoints written before q, k, v were split).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import hirune.families.adversary as AD
import hirune.distributed.strategy as S
import hirune.training.trainer as T
from hirune.cli import main
from hirune.distributed.runtime import leave


def sum_grads() -> None:
    wrap = S.wrap

    def broken(model, strategy, world, device, **options):
        out = wrap(model, strategy, world, device, **options)
        if strategy in S.FSDP_STRATEGIES:
            out.set_gradient_divide_factor(1.0)  # reduce with SUM and never divide
        return out

    S.wrap = broken


def fail_on_rank_1() -> None:
    step = T.Trainer.train_step

    def failing(self, data, labels, **kw):
        if self.world.rank == 1 and self.step == 2:
            raise RuntimeError("injected fault on rank 1 at step 2")
        return step(self, data, labels, **kw)

    T.Trainer.train_step = failing


def stale_rank_1() -> None:
    resolve = T.resolve_checkpoint

    def stale(path):
        found = resolve(path)
        if int(os.environ["RANK"]) == 1:
            return min(p for p in found.parent.iterdir() if p.name.startswith("step_"))
        return found

    T.resolve_checkpoint = stale


def record_dtypes(out: Path) -> None:
    """Write the dtype of the first block's weight as its forward sees it (gathered) and
    as the optimizer keeps it (the shard) to OUT/dtypes_rank<R>.json."""
    wrap = S.wrap
    seen: dict[str, str] = {}

    def recording(model, strategy, world, device, **options):
        wrapped = wrap(model, strategy, world, device, **options)
        block = S.blocks(model)[0]
        weight = next(block.parameters())
        seen["stored"] = str(weight.dtype)

        def hook(module, args):
            seen["gathered"] = str(next(module.parameters()).dtype)
            (out / f"dtypes_rank{world.rank}.json").write_text(json.dumps(seen))

        block.register_forward_pre_hook(hook)
        return wrapped

    S.wrap = recording


def count_allreduce(out: Path) -> None:
    wrap = S.wrap
    counts: list[int] = []

    def counting(model, strategy, world, device, **options):
        ddp = wrap(model, strategy, world, device, **options)

        def hook(state, bucket):
            counts[-1] += 1
            fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
            return fut.then(lambda f: f.value()[0] / world.size)

        ddp.register_comm_hook(None, hook)
        return ddp

    step = T.Trainer.train_step

    def counted(self, data, labels, **kw):
        counts.append(0)
        result = step(self, data, labels, **kw)
        (out / f"allreduce_rank{self.world.rank}.json").write_text(json.dumps(counts))
        return result

    T.Trainer.train_step = counted
    S.wrap = counting


def save_after_load() -> None:
    load = T.Trainer.load

    def loading_then_saving(self, path):
        load(self, path)
        self.save()

    T.Trainer.load = loading_then_saving


@record
def run() -> int:
    scenario, args = sys.argv[1], sys.argv[2:]
    if scenario == "sum-grads":
        sum_grads()
    elif scenario == "fail":
        fail_on_rank_1()
    elif scenario == "gan-local-weight":
        AD.Adversary.mean_over_ranks = lambda self, *tensors: tensors  # each rank's own gradients
    elif scenario == "stale-rank-1":
        stale_rank_1()
    elif scenario == "save-after-load":
        save_after_load()
    elif scenario == "record-dtypes":
        out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("out=")))
        out.mkdir(parents=True, exist_ok=True)
        record_dtypes(out)
    elif scenario.startswith("count-allreduce"):
        if scenario.endswith("without-no-sync"):  # the harness's broken variant
            S.sync_gradients = lambda wrapped, strategy, last: S.nullcontext()
        out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("out=")))
        out.mkdir(parents=True, exist_ok=True)
        count_allreduce(out)
    return main(["train", *args])


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    leave(run())
