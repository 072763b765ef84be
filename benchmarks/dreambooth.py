"""DreamBooth with and without prior preservation (Ruiz et al. 2023; `families/dreambooth.py`):
a text-to-image base fine-tuned on four crossbar sevens as "a sks seven", at lambda = 0 and 1.

    python benchmarks/dreambooth.py BASE_RUN [--steps 400] [--n 200] [--lora] [--scale 1]
        [--sample-steps 25] [--out bench_out/dreambooth]

BASE_RUN: a trained text-to-image run on mnist5k (e.g. `hirune train text-mnist5k`).  Each row
trains --steps steps with the defaults of `hirune train dreambooth` (full weights, lr 1e-4;
--lora adds LoRA rows at lr 1e-3) from the base's EMA weights, then draws n samples (DDIM,
--sample-steps, guidance scale --scale, seed 0) from its EMA weights.  Columns:

* fidelity: the share of "a sks seven" samples with the crossbar (`evaluation.subject.has_crossbar`);
* drift: the share of plain "a seven" samples with the crossbar (language drift: the class
  taking the subject's mark);
* sks read as 7: the share of "a sks seven" samples the shipped evaluator calls a seven;
* diversity: the mean pairwise Euclidean distance of the "a sks seven" samples in the
  evaluator's 128-d features (beside: the base's "a seven" samples, and the four instances);
* other digits: text accuracy of "a handwritten <digit>" for the nine digits but seven (n
  samples in turn), read by the evaluator.

The first row is the base before tuning.  Every run draws its class images (the same
seed: the same images, checked).  Writes OUT.md, OUT.json and
OUT.png (rows: the instances; then per model 8 "a sks seven" | 8 "a seven" samples).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from hirune.data.captions import caption
from hirune.data.subjects import crossbar_sevens
from hirune.evaluation.subject import has_crossbar
from hirune.families.dreambooth import CLASS_IMAGES
from hirune.metrics.evaluator import features_and_logits, load_evaluator
from hirune.training import load
from hirune.training.loop import train
from hirune.training.presets import finetune_config
from hirune.viz import image_grid

INSTANCE, CLASS = "a sks seven", "a seven"


def diversity(net, images) -> float:
    """Mean pairwise Euclidean distance of the images' evaluator features."""
    f = features_and_logits(net, images)[0]
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


def sample(run, prompts: list[str], args) -> torch.Tensor:
    denoiser = run.guide("cfg", args.scale) if args.scale != 1 else None
    out, _ = run.generate(len(prompts), "ddim", args.sample_steps, seed=0, prompts=prompts, denoiser=denoiser,
                          progress=False)
    return out.x.cpu().clamp(-1, 1)


def score(run, net, args) -> tuple[dict, torch.Tensor]:
    sks, seven = sample(run, [INSTANCE] * args.n, args), sample(run, [CLASS] * args.n, args)
    digits = torch.tensor([d for d in range(10) if d != 7]).repeat(args.n // 9 + 1)[:args.n]
    others = sample(run, [caption(int(d)) for d in digits], args)
    logits = features_and_logits(net, torch.cat([sks, others]))[1]
    row = {"fidelity": has_crossbar(sks).float().mean().item(), "drift": has_crossbar(seven).float().mean().item(),
           "sks_read_as_seven": (logits[:args.n].argmax(1) == 7).float().mean().item(),
           "diversity": diversity(net, sks), "seven_diversity": diversity(net, seven),
           "other_digits_accuracy": (logits[args.n:].argmax(1) == digits).float().mean().item()}
    return row, torch.cat([sks[:8], seven[:8]])


def tune(name: str, args, root: Path, **settings) -> tuple[dict, Path]:
    out = root / name.replace(" ", "_").replace("=", "")
    cfg = finetune_config("dreambooth", args.base, {"steps": args.steps, "ckpt_every": args.steps, "out": str(out),
                                                    "seed": args.seed, **settings})
    t0 = time.perf_counter()
    train(cfg, progress=False)
    seconds = time.perf_counter() - t0
    return {"name": name, **settings, "train_seconds": seconds, "lr": cfg.lr}, out


def table(rows: list[dict], instance_diversity: float, note: str) -> str:
    lines = ["| model | fidelity (sks with bar) | drift (seven with bar) | sks read as 7 | diversity of sks "
             "(base's sevens) | other digits' text accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['fidelity']:.1%} | {r['drift']:.1%} | {r['sks_read_as_seven']:.1%} | "
                     f"{r['diversity']:.2f} ({rows[0]['seven_diversity']:.2f}) | {r['other_digits_accuracy']:.1%} |")
    lines.append(f"| the four instances | 100% | | | {instance_diversity:.2f} | |")
    return "\n".join(lines) + f"\n\n{note}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="a trained text-to-image diffusion run on mnist5k (e.g. runs/text-mnist5k)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of every tuning")
    p.add_argument("--n", type=int, default=200, help="samples per prompt kind and row")
    p.add_argument("--lora", action="store_true", help="also LoRA rows (adapter=lora, lr 1e-3)")
    p.add_argument("--scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the samples")
    p.add_argument("--class-images", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/dreambooth", help="writes OUT.md, OUT.json and OUT.png")
    args = p.parse_args(argv)
    if args.n < 9:
        raise SystemExit("--n must be >= 9 (one sample per other digit at least)")
    net = load_evaluator("mnist5k")
    base = load(args.base)
    row, grid = score(base, net, args)
    rows, grids = [{"name": "base (before tuning)", **row}], [grid]
    print(f"base: {rows[0]}", flush=True)
    settings = [("full, lambda=0", {"prior_weight": 0.0}), ("full, lambda=1", {"prior_weight": 1.0})]
    if args.lora:
        settings += [("LoRA, lambda=0", {"prior_weight": 0.0, "adapter": "lora"}),
                     ("LoRA, lambda=1", {"prior_weight": 1.0, "adapter": "lora"})]
    class_images, same = None, True
    with tempfile.TemporaryDirectory() as tmp:
        for name, values in settings:
            info, run_dir = tune(name, args, Path(tmp), class_images=args.class_images, **values)
            if values["prior_weight"]:  # lambda = 0 draws no class images: every row is an instance
                drawn = load_file(str(run_dir / CLASS_IMAGES))["images"]
                same = same and (class_images is None or torch.equal(drawn, class_images))
                class_images = drawn
            row, grid = score(load(run_dir), net, args)
            rows.append({**info, **row})
            grids.append(grid)
            print(f"{name}: {rows[-1]}", flush=True)
    instances = crossbar_sevens()
    note = (f"base {args.base} (step {base.step}, {base.cfg.model}, text_encoder {base.config.text_encoder}); "
            f"each tuning {args.steps} steps at batch {base.cfg.batch_size} (half instance, half class rows), "
            f"{args.class_images} class images of {CLASS!r} drawn by the base; {args.n} samples per prompt kind, DDIM "
            f"{args.sample_steps} steps, guidance scale {args.scale}; diversity: mean pairwise distance in the "
            f"evaluator's features (in brackets: the base's {CLASS!r} samples).  "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU'}, {torch.get_num_threads()} threads.")
    text = table(rows, diversity(net, instances), note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"base": args.base, "base_step": base.step, "steps": args.steps,
                                                    "n": args.n, "scale": args.scale, "rows": rows,
                                                    "same_class_images": same}, indent=1))
    pad = torch.full((16 - len(instances), *instances.shape[1:]), -1.0)
    image_grid(torch.cat([instances, pad, *grids]), out.with_suffix(".png"), nrow=16)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
