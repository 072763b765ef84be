"""Teaching a trained text-to-image run one subject from a few images: textual inversion (a new
word's embedding alone; Gal et al. 2022; `families/textual_inversion.py`) against LoRA on the
same images, for the same steps.

    python benchmarks/textual_inversion.py BASE_RUN --instance digit:7 [--initializer digit]
        [--steps 500] [--n 200] [--sample-steps 25] [--out bench_out/textual_inversion]

BASE_RUN: a text-conditioned diffusion run on a digit set (e.g. `hirune train text-mnist5k`);
--instance: digit:D (the first 5 train-split images of D) or thick:D (the 5 with the most ink).
Textual inversion trains the placeholder "<s*>" from --initializer (default "digit": a word
that names no digit, so "before" is what the base draws for an unnamed digit) with the
defaults of `hirune train textual-inversion` (lr 5e-3, batch 16, no caption dropout), and
samples "an image of <s*>".  LoRA (`hirune train lora`'s defaults, lr 1e-3, rank 4 on q, k, v,
proj, batch 16 too) trains on the same images captioned "a sks digit" (DreamBooth's rare
identifier and class noun) and samples that caption; DreamBooth (`hirune train dreambooth`'s
defaults: every weight at lr 1e-4, prior preservation with lambda = 1 on 100 class images
that the base draws for "a digit" first) on the same images and caption, batch 16 too (half
of its rows class images).

Columns: trainable parameters, the file a result ships (embedding.safetensors /
adapter_model.safetensors), ms per step (median), and per prompt, before and after training:
the share of n samples (DDIM, --sample-steps, seed 0, no guidance) that the shipped evaluator
reads as the instance's digit, and their mean ink (`captions.ink_amount`; the instance's own
beside it).  Writes OUT.md, OUT.json and OUT.png (rows: the instance, then 16 samples of each
prompt before and after).  Run it alone on the machine: step times compare only within one run.
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
from hirune.data import load_dataset
from hirune.data.captions import ink_amount
from hirune.data.instances import IDENTIFIER_CAPTION, instance_images
from hirune.families import textual_inversion
from hirune.inference.generate import generate
from hirune.metrics.evaluator import features_and_logits, load_evaluator
from hirune.models import lora
from hirune.models.textual_inversion import DEFAULT_PLACEHOLDER, EMBEDDING_FILE
from hirune.training import load
from hirune.training.presets import finetune_config
from hirune.training.trainer import Trainer

TI_PROMPT = f"an image of {DEFAULT_PLACEHOLDER}"


def instance_digit(spec: str) -> int:
    kind, _, rest = spec.partition(":")
    if kind not in ("digit", "thick") or not rest:
        raise ValueError(f"--instance {spec!r} is not valid here; valid: digit:D or thick:D (the evaluator reads D)")
    return int(rest.split(":")[0])


def measure(run, prompt: str, digit: int, args) -> tuple[dict, torch.Tensor]:
    out, _ = generate(run, args.n, "ddim", args.sample_steps, seed=0, prompt=prompt, progress=False)
    x = out.x.cpu().clamp(-1, 1)
    _, logits = features_and_logits(load_evaluator(run.data.name), x)
    return {"share": float((logits.argmax(1) == digit).double().mean()), "ink": float(ink_amount(x).mean())}, x


def tune(kind: str, args, out: Path, **settings) -> dict:
    """Train `kind` (textual-inversion | lora | dreambooth) on the instance, timing its steps."""
    cfg = finetune_config(kind, args.base, {"instance": args.instance, "steps": args.steps, "ckpt_every": args.steps,
                                            "batch_size": args.batch, "out": str(out), "seed": args.seed,
                                            **settings})
    trainer = Trainer(cfg, distributed=False)
    data, labels = trainer.training_data()
    trainer.model.train()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step(data, labels)
        times.append(time.perf_counter() - t0)
    trainer.save()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    shipped = {"textual-inversion": out / EMBEDDING_FILE, "lora": out / "adapter" / lora.ADAPTER_WEIGHTS,
               "dreambooth": latest_checkpoint(out) / "model.safetensors"}[kind]
    return {"trainable": trainable, "file_bytes": shipped.stat().st_size,
            "ms_per_step": 1000 * statistics.median(times[1:] or times)}


def table(rows: list[dict], instance_ink: float, note: str) -> str:
    lines = ["| method | prompt | trainable | file bytes | ms / step | share read as the digit: before -> after "
             "| mean ink: before -> after |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | \"{r['prompt']}\" | {r['trainable']:,} | {r['file_bytes']:,} | "
                     f"{r['ms_per_step']:.1f} | {r['before']['share']:.1%} -> {r['after']['share']:.1%} | "
                     f"{r['before']['ink']:.3f} -> {r['after']['ink']:.3f} |")
    return "\n".join(lines) + f"\n\nThe instance's own mean ink: {instance_ink:.3f}.  {note}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="a trained text-conditioned diffusion run on digits or mnist5k")
    p.add_argument("--instance", default="digit:7", help="digit:D or thick:D")
    p.add_argument("--initializer", default="digit", help="the one-token word the placeholder starts from")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of each method")
    p.add_argument("--batch", type=int, default=16, help="batch size of each method")
    p.add_argument("--n", type=int, default=200, help="samples per prompt and stage")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/textual_inversion", help="writes OUT.md, OUT.json and OUT.png")
    args = p.parse_args(argv)
    digit = instance_digit(args.instance)
    base = load(args.base)
    train_split = load_dataset(base.data.name, "train")
    images = instance_images(args.instance, train_split.data, train_split.labels)
    start = load(args.base)   # the placeholder at its initial value: the row before training
    textual_inversion.add_placeholder(start, DEFAULT_PLACEHOLDER, initializer=args.initializer)
    rows, grids = [], [images]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arms = [("textual inversion", "textual-inversion", TI_PROMPT, start, {"initializer": args.initializer}),
                ("LoRA rank 4 (q, k, v, proj)", "lora", IDENTIFIER_CAPTION, base,
                 {"instance_prompt": IDENTIFIER_CAPTION, "prior_weight": 0.0}),
                ("DreamBooth (every weight, lambda = 1)", "dreambooth", IDENTIFIER_CAPTION, base,
                 {"instance_prompt": IDENTIFIER_CAPTION, "class_prompt": "a digit"})]
        for method, kind, prompt, before_run, settings in arms:
            before, xb = measure(before_run, prompt, digit, args)
            row = {"method": method, "prompt": prompt, **tune(kind, args, root / kind, **settings), "before": before}
            row["after"], xa = measure(load(root / kind), prompt, digit, args)
            print(f"{method}: {row['before']['share']:.1%} -> {row['after']['share']:.1%} read as {digit}, "
                  f"{row['ms_per_step']:.0f} ms/step", flush=True)
            rows.append(row)
            grids += [xb[:16], xa[:16]]
    note = (f"Base {args.base} (step {base.step}, {base.cfg.model}, text_encoder {base.config.text_encoder}) taught "
            f"{args.instance} ({len(images)} images) for {args.steps} steps at batch {args.batch}; textual inversion "
            f"from \"{args.initializer}\" at lr 5e-3, LoRA at lr 1e-3, DreamBooth at 1e-4; {args.n} samples per "
            f"cell, DDIM "
            f"{args.sample_steps} steps, no guidance; shares read by the shipped {base.data.name} evaluator; ms / "
            f"step: median on {torch.get_num_threads()} threads, {'CUDA' if torch.cuda.is_available() else 'CPU'} "
            "(DreamBooth's class images, drawn before its first step, are not in it).")
    text = table(rows, float(ink_amount(images).mean()), note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    from hirune.viz import image_grid

    padded = [torch.cat([g, g.new_full((16 - len(g), *g.shape[1:]), -1.0)]) if len(g) < 16 else g for g in grids]
    image_grid(torch.cat(padded), out.with_suffix(".png"), nrow=16)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
