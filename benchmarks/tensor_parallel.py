"""Per-rank memory and step time of one DiT training step under each way of splitting it over
processes: one process, ddp, zero3 (FSDP2), tp (tensor parallelism), tp + sp (sequence
parallelism), and the 2 x 2 (dp, tp) mesh under zero3 -- the same global batch throughout, on
gloo and this machine's CPU cores, every layout through `hirune.training.Trainer` (PyTorch's DDP,
FSDP2 and DTensor underneath).

    python benchmarks/tensor_parallel.py                       # DiT-S/2 on MNIST 5k (196 tokens)
    python benchmarks/tensor_parallel.py --size B/2 --batch 8  # bigger

Per rank and measured, not computed: the bytes of the parameters, gradients and AdamW state the
rank holds (local shards of DTensors), the bytes autograd saves for backward in one micro-batch
(saved-tensor hooks, each storage once), and the median wall time of an optimizer step.  On a
CPU the collectives run over loopback and every process shares the same cores, so the times say
what the communication costs here, not what the split buys on GPUs (the memory columns are what
carries over).  Writes OUT/tensor_parallel.{md,json} (OUT: --out, default bench_out/tensor_parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = [  # (name, processes, config overrides)
    ("1 process", 1, {}),
    ("ddp", 2, {"strategy": "ddp"}),
    ("zero3", 2, {"strategy": "zero3"}),
    ("tp=2", 2, {"tp": 2}),
    ("tp=2 sp", 2, {"tp": 2, "sp": True}),
    ("2 x 2 mesh: zero3 x tp=2 sp", 4, {"tp": 2, "sp": True, "strategy": "zero3"}),
]


def _local_bytes(t) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def worker(args) -> None:
    import torch

    from hirune.families import Batch
    from hirune.training import Trainer, preset_config
    from hirune.training.trainer import micro_batch_indices

    overrides = json.loads(args.overrides)
    cfg = preset_config("dit-mnist5k", {"model_config": {"size": args.size}, "batch_size": args.batch,
                                        "steps": args.steps + 1, "sample_every": 0, "ckpt_every": 0, "eval_samples": 0,
                                        "out": str(Path(args.out) / "run"), **overrides})
    run = Trainer(cfg)
    data, labels = run.training_data()
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        run.train_step(data, labels)
        times.append(time.perf_counter() - start)
    params = sum(_local_bytes(p) for p in run.model.parameters())
    grads = sum(_local_bytes(p.grad) for p in run.model.parameters() if p.grad is not None)
    optim = sum(_local_bytes(v) for s in run.optimizer.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    # one micro-batch's saved activations: this rank's slice of the global batch
    world, b = run.world, run.micro_batch
    idx = micro_batch_indices(len(data), cfg.batch_size, 0, cfg.seed)[world.dp_rank * b:(world.dp_rank + 1) * b]
    draw = run.family.draw(cfg.batch_size, run.noise_rng).slice(slice(world.dp_rank * b, (world.dp_rank + 1) * b))
    weights = {(p.to_local() if hasattr(p, "to_local") else p).untyped_storage().data_ptr()
               for p in run.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        local = t.to_local() if hasattr(t, "to_local") else t
        try:
            storage = local.untyped_storage()
            ptr = storage.data_ptr()
        except RuntimeError:
            return t
        if ptr not in weights:
            seen[ptr] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run.family.loss(run.forward, Batch(data[idx], labels[idx] if labels is not None else None, idx), draw,
                               0).loss
    loss.backward()
    result = {"rank": world.rank, "params": params, "grads": grads, "optimizer": optim,
              "activations": sum(seen.values()), "step_s": statistics.median(times[1:]),
              "micro_batch": b, "num_params": sum(p.numel() for p in run.model.parameters())}
    (Path(args.out) / f"rank{world.rank}.json").write_text(json.dumps(result))
    if world.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def launch(name: str, procs: int, overrides: dict, args, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    me = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--overrides", json.dumps(overrides),
          "--size", args.size, "--batch", str(args.batch), "--steps", str(args.steps)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] + me
           if procs > 1 else [sys.executable] + me)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(procs)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="S/2", help="DiT size (models.dit.DIT_SIZES), patch 2 on 28 x 28: 196 tokens")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one untimed)")
    p.add_argument("--out", default="bench_out/tensor_parallel")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import shutil

    rows = []
    for i, (name, procs, overrides) in enumerate(LAYOUTS):
        out = Path(args.out) / f"layout{i}"
        shutil.rmtree(out, ignore_errors=True)
        ranks = launch(name, procs, overrides, args, out)
        worst = max(ranks, key=lambda r: r["params"] + r["grads"] + r["optimizer"] + r["activations"])
        rows.append({"layout": name, "processes": procs, **{k: worst[k] for k in
                     ("params", "grads", "optimizer", "activations", "step_s", "micro_batch", "num_params")}})
        print(f"{name}: {rows[-1]}", flush=True)
    base = rows[0]
    mib = 2 ** 20
    lines = [f"DiT-{args.size} on MNIST 5k (196 tokens), global batch {args.batch}, "
             f"{base['num_params']:,} parameters; per rank (the largest rank), measured",
             "", "| layout | processes | micro-batch | weights MiB | gradients MiB | AdamW MiB | saved activations MiB "
             "| step s | memory vs 1 process |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        total = r["params"] + r["grads"] + r["optimizer"] + r["activations"]
        base_total = base["params"] + base["grads"] + base["optimizer"] + base["activations"]
        lines.append(f"| {r['layout']} | {r['processes']} | {r['micro_batch']} | {r['params'] / mib:.1f} | "
                     f"{r['grads'] / mib:.1f} | {r['optimizer'] / mib:.1f} | {r['activations'] / mib:.1f} | "
                     f"{r['step_s']:.2f} | {total / base_total:.2f} |")
    table = "\n".join(lines)
    print(table)
    results = Path(args.out)
    (results / "tensor_parallel.md").write_text(table + "\n")
    (results / "tensor_parallel.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
