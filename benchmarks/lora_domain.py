"""Adapting a trained digit model to a new domain: LoRA at several ranks against full
fine-tuning, for the same steps (Hu et al. 2021; `hirune.models.lora`, `families/finetune.py`).

    python benchmarks/lora_domain.py BASE_RUN --dataset mnist5k-inverted [--steps 500]
        [--ranks 1 4 16] [--n 500] [--sample-steps 25] [--out bench_out/lora_domain]

BASE_RUN: a trained diffusion run on mnist5k (e.g. `hirune train vpred-mnist5k`); --dataset a
domain of the same shape: mnist5k-inverted (x -> -x) or mnist5k-thick (the thickest third of
each digit).  Every row starts from the base's EMA weights and trains --steps steps on the
domain with the defaults of `hirune train lora` / `hirune train finetune` (LoRA: lr 1e-3 on
q, k, v, proj of every attention, alpha = rank; full: lr 1e-4, every weight), then draws n
samples (DDIM, --sample-steps, seed 0) from its EMA weights.  Columns:

* trainable: parameters that train, and their share of the base network's;
* file: the bytes a run must ship beyond the base -- adapter_model.safetensors (peft's layout)
  for LoRA, the network's weights (model.safetensors of the checkpoint) for full fine-tuning;
* optimizer state: the bytes of AdamW's moments (and steps) after training;
* ms / step: the median time of one optimizer step (the first left out), on this machine;
* Frechet distance to the domain's test split in the shipped evaluator's features
  (`metrics.evaluator.evaluate_images`; inverted digits are read inverted back), beside the
  base's own before tuning and the real-vs-real reference.

Then the comparison of the LoRA note at equal parameter count: q, k, v and proj at rank 2
against q alone at rank 8 (4 x 2 = 8 rank-units on layers of the same width).  Prints one
markdown table and writes OUT.md and OUT.json.  Train nothing else on the machine meanwhile:
the step times are only comparable within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hirune.checkpoint import latest_checkpoint
from hirune.inference.generate import generate
from hirune.metrics.evaluator import evaluate_images
from hirune.models import lora
from hirune.training import load
from hirune.training.presets import finetune_config
from hirune.training.trainer import Trainer


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def score(run, dataset: str, args) -> dict:
    out, _ = generate(run, args.n, "ddim", args.sample_steps, seed=0, progress=False)
    return evaluate_images(dataset, out.x.cpu().clamp(-1, 1))


def tune(name: str, kind: str, args, root: Path, **settings) -> dict:
    """Fine-tune the base on the domain (kind lora | finetune), time its steps, score its samples."""
    out = root / name
    cfg = finetune_config(kind, args.base, {"dataset": args.dataset, "steps": args.steps, "ckpt_every": args.steps,
                                            "out": str(out), "seed": args.seed, **settings})
    trainer = Trainer(cfg, distributed=False)
    data, labels = trainer.training_data()
    trainer.model.train()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(trainer.train_step(data, labels)[0])
        times.append(time.perf_counter() - t0)
    trainer.save()
    trainable, total = lora.trainable_count(trainer.model)
    shipped = out / "adapter" / lora.ADAPTER_WEIGHTS if kind == "lora" else latest_checkpoint(out) / "model.safetensors"
    row = {"name": name, "kind": kind, **settings, "trainable": trainable, "total": total,
           "base_parameters": total - trainable if kind == "lora" else total,
           "file_bytes": shipped.stat().st_size, "optimizer_bytes": optimizer_bytes(trainer.optimizer),
           "ms_per_step": 1000 * statistics.median(times[1:] or times),
           "mean_loss_last_tenth": statistics.fmean(losses[-max(1, len(losses) // 10):])}
    del trainer
    m = score(load(out), args.dataset, args)
    row.update(frechet_distance=m["frechet_distance"], frechet_real_vs_real=m["frechet_real_vs_real"])
    print(f"{name}: FD {row['frechet_distance']:.2f}, {row['ms_per_step']:.0f} ms/step", flush=True)
    return row


def table(base_fd: float, rows: list[dict], note: str) -> str:
    lines = ["| tuning | trainable (share) | file bytes | optimizer-state bytes | ms / step | Frechet distance |",
             "|---|---|---|---|---|---|",
             f"| none (the base) | 0 | - | - | - | {base_fd:.2f} |"]
    for r in rows:
        share = r["trainable"] / r["base_parameters"]
        lines.append(f"| {r['name']} | {r['trainable']:,} ({share:.2%}) | {r['file_bytes']:,} | "
                     f"{r['optimizer_bytes']:,} | {r['ms_per_step']:.1f} | {r['frechet_distance']:.2f} |")
    lines.append(f"| real vs real | | | | | {rows[0]['frechet_real_vs_real']:.2f} |")
    return "\n".join(lines) + f"\n\n{note}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="a trained diffusion run on mnist5k (or any data of the domain's shape)")
    p.add_argument("--dataset", default="mnist5k-inverted", help="the domain: mnist5k-inverted | mnist5k-thick")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of every tuning")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--n", type=int, default=500, help="samples scored per row")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/lora_domain", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    base = load(args.base)
    base_fd = score(base, args.dataset, args)["frechet_distance"]
    print(f"base: FD {base_fd:.2f} on {args.dataset}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in args.ranks:
            rows.append(tune(f"LoRA rank {r} (q, k, v, proj)", "lora", args, root / f"r{r}", lora_rank=r))
        rows.append(tune("full fine-tuning", "finetune", args, root / "full"))
        rows.append(tune("LoRA rank 2 on q, k, v, proj", "lora", args, root / "qkvp2", lora_rank=2))
        rows.append(tune("LoRA rank 8 on q alone", "lora", args, root / "q8", lora_rank=8, lora_targets="q"))
    note = (f"base {args.base} (step {base.step}, {base.cfg.model} {lora.trainable_count(base.model)[1]:,} "
            f"parameters) tuned {args.steps} steps on {args.dataset} (batch {base.cfg.batch_size}); LoRA lr 1e-3, "
            f"full fine-tuning lr 1e-4, constant after 20 warmup steps; {args.n} samples per row, DDIM "
            f"{args.sample_steps} steps; Frechet distance to the {args.dataset} test split in the evaluator's "
            f"features; ms / step: median on {torch.get_num_threads()} threads, "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU'}.  The last two rows train the same number of "
            "parameters.")
    text = table(base_fd, rows, note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"base": args.base, "base_step": base.step, "dataset": args.dataset,
                                                    "steps": args.steps, "n": args.n, "base_frechet": base_fd,
                                                    "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
