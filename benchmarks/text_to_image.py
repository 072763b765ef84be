"""Text to image on the digit sets: does the model draw the digit the caption names, also for
phrasings it never saw in training?

    python benchmarks/text_to_image.py [--dataset mnist5k] [--steps 800] [--n 200] [--scales 1 3] [--latent]

Contestants: the presets text-DATASET (a small text transformer trained with the UNet)
and text-minilm-DATASET (the frozen all-MiniLM-L6-v2 sentence encoder), the same UNet
and recipe otherwise, `--steps` optimizer steps each.  `--latent` (MNIST 5k): the same two
encoders on the latent UNet of text-ldm-mnist5k / text-minilm-ldm-mnist5k, i.e. latent
diffusion with a frozen text encoder and cross-attention, Stable Diffusion in miniature (the
kl-ae-mnist5k autoencoder is trained first, into OUT, when missing).  Each is sampled (DDIM, `--sample-
steps`) from `--n` captions per phrasing naming the digits in turn: the four training
phrasings and three held-out ones (other words and word order, `hirune.data.captions`),
with classifier-free guidance at each scale; the shipped evaluator classifies the
samples, and the table gives the share drawn as the digit named (chance: 10%).  Writes
OUT/results.md, OUT/results.json and a grid per contestant (OUT/<name>.png: one row per
digit, held-out phrasing "an image of a <digit>").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hirune.checkpoint import latest_checkpoint
from hirune.families.diffusion_eval import text_report
from hirune.inference.generate import generate, guide
from hirune.training import load, preset_config, train
from hirune.viz import image_grid

CONTESTANTS = {"tiny": "text-{}", "minilm": "text-minilm-{}"}
LATENT = {"tiny": "text-ldm-{}", "minilm": "text-minilm-ldm-{}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "mnist5k"), default="mnist5k")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--n", type=int, default=200, help="samples per phrasing")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--only", default=",".join(CONTESTANTS))
    p.add_argument("--latent", action="store_true", help="latent diffusion (MNIST 5k): text-[minilm-]ldm-mnist5k")
    p.add_argument("--out", default="bench_out/text")
    args = p.parse_args(argv)
    if args.latent and args.dataset != "mnist5k":
        p.error("--latent runs on --dataset mnist5k (the presets text-[minilm-]ldm-mnist5k)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if args.latent:
        ae = out / "kl-ae-mnist5k"
        if latest_checkpoint(ae) is None:
            train(preset_config("kl-ae-mnist5k", {"out": str(ae), "sample_every": 0}))
        extra = {"autoencoder": str(ae)}
    results = {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        preset = (LATENT if args.latent else CONTESTANTS)[name].format(args.dataset)
        run_dir = out / preset
        t0 = time.perf_counter()
        if latest_checkpoint(run_dir) is None:
            train(preset_config(preset, {"steps": args.steps, "out": str(run_dir), "sample_every": 0,
                                         "eval_samples": 0, **extra}))
        train_s = time.perf_counter() - t0
        run = load(run_dir)
        row = {"preset": preset, "params": sum(p.numel() for p in run.model.parameters()), "steps": args.steps,
               "train_minutes": train_s / 60}
        for scale in args.scales:
            d = guide(run, "cfg", scale) if scale != 1.0 else None
            acc = text_report(run, args.n, "ddim", args.sample_steps, denoiser=d)
            row[f"s={scale:g}"] = acc
        prompts = [f"an image of a {w}" for w in ("zero one two three four five six seven eight nine".split())
                   for _ in range(8)]
        x = generate(run, len(prompts), "ddim", args.sample_steps, prompts=prompts,
                     denoiser=guide(run, "cfg", max(args.scales)), progress=False)[0].x
        image_grid(x, out / f"{name}.png", nrow=8)
        results[name] = row
        print(json.dumps(row))
        (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["| text encoder | preset | params | steps | " + " | ".join(
        f"training phrasings s={s:g} | held-out phrasings s={s:g}" for s in args.scales) + " |",
             "|---|---|---|---|" + "---|---|" * len(args.scales)]
    for name, r in results.items():
        cells = " | ".join(f"{r[f's={s:g}']['train_phrasing_accuracy']:.1%} | "
                           f"{r[f's={s:g}']['held_out_phrasing_accuracy']:.1%}" for s in args.scales)
        lines.append(f"| {name} | {r['preset']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {cells} |")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
