"""Thresholding of the x0 estimate at classifier-free guidance scales: none, static,
dynamic (Imagen, Saharia et al. 2022 sec. 2.3; `hirune.process.thresholding`).

    python benchmarks/thresholding.py RUN [--n 500] [--scales 1 3 8 15] [--steps 25]
        [--sampler ddim] [--percentile 0.995] [--out DIR]

RUN: a trained pixel run that classifier-free guidance can steer -- a text-to-image run
(`hirune train text-mnist5k ...`; its captions name the digits in turn, "a handwritten
<digit>") or a class-conditional run (`class_conditional=true`, the classes in turn), both
trained with condition dropout.  Latent runs are refused (their latents are not in
[-1, 1]).  For each scale s and each thresholding, n samples (the same seed and noise for
every point), scored by hirune's evaluator:

* frechet_distance: to the test split in evaluator features (`evaluate_images`), of the
  samples after the final clamp to [-1, 1];
* accuracy: how often the evaluator reads the digit the caption (or label) names;
* saturated: the share of pixel values at a bound after that clamp, |x| >= 1 - 1/255 (they
  would be 0 or 255 in 8 bits); saturated_high: those at the bright end, x >= 1 - 1/255
  (the ink; the dark background of a digit is at -1 by nature, so the test split's own
  shares are printed as the reference row);
* beyond_range: the share of the raw sampler output outside [-1, 1] (|x| > 1), before the
  clamp -- what static and dynamic thresholding keep at 0 for samplers that end on x0.

Prints a markdown table; writes OUT/thresholding.json, OUT/thresholding.md and
OUT/thresholding.png (one row per scale x method, the first --per-row samples of each).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hirune.data import load_dataset
from hirune.inference.generate import generate
from hirune.metrics.evaluator import evaluate_images
from hirune.training import load
from hirune.viz import image_grid

METHODS = ("none", "static", "dynamic")
SATURATED = 1 - 1 / 255  # a value that is 0 or 255 in 8 bits


def saturation(x: torch.Tensor) -> dict:
    """Shares of values of the raw samples x: beyond [-1, 1], and at a bound after the clamp."""
    clamped = x.clamp(-1, 1)
    return {"beyond_range": float((x.abs() > 1).double().mean()),
            "saturated": float((clamped.abs() >= SATURATED).double().mean()),
            "saturated_high": float((clamped >= SATURATED).double().mean())}


def check_run(run) -> str:
    """What conditions the run (text or class); refused where CFG or thresholding cannot go."""
    if not hasattr(run, "guide"):
        raise SystemExit(f"thresholding needs a diffusion or flow-matching run; this is a {run.name} run")
    if run.first_stage is not None:
        raise SystemExit("thresholding is not valid for a latent diffusion run: its samples are autoencoder "
                         "latents, not pixels in [-1, 1]")
    if run.text is None and not run.config.class_conditional:
        raise SystemExit("the run needs a condition to guide: a text-to-image run (text_encoder=tiny|minilm) or "
                         "a class-conditional one (class_conditional=true)")
    return "text" if run.text is not None else "class"


def sweep(run, args) -> list[dict]:
    from tqdm.auto import tqdm

    rows, pictures = [], []
    points = [(s, m) for s in args.scales for m in METHODS]
    for s, method in tqdm(points, desc="scale x threshold", unit="point"):
        d = run.guide("cfg", s, threshold=method, percentile=args.percentile)
        t0 = time.perf_counter()
        out, labels = generate(run, args.n, args.sampler, args.steps, seed=args.seed, denoiser=d, progress=False)
        x = out.x.cpu()
        m = evaluate_images(run.data.name, x.clamp(-1, 1), labels)
        row = {"scale": s, "threshold": method, "frechet_distance": m["frechet_distance"],
               "accuracy": m["class_accuracy"], **saturation(x), "seconds": time.perf_counter() - t0,
               "frechet_real_vs_real": m["frechet_real_vs_real"]}
        rows.append(row)
        pictures.append(x[:args.per_row].clamp(-1, 1))
    image_grid(torch.cat(pictures), Path(args.out) / "thresholding.png", nrow=args.per_row)
    return rows


def table(rows: list[dict], reference: dict, note: str) -> str:
    lines = ["| scale s | threshold | Frechet distance | accuracy | saturated | saturated (bright) "
             "| raw beyond [-1, 1] |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']:g} | {r['threshold']} | {r['frechet_distance']:.2f} | {r['accuracy']:.1%} | "
                     f"{r['saturated']:.1%} | {r['saturated_high']:.2%} | {r['beyond_range']:.2%} |")
    lines.append(f"| test split | | {rows[0]['frechet_real_vs_real']:.2f} (real vs real) | | "
                 f"{reference['saturated']:.1%} | {reference['saturated_high']:.2%} | "
                 f"{reference['beyond_range']:.2%} |")
    return "\n".join(lines) + f"\n\n{note}\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained pixel text-to-image or class-conditional run (p_uncond > 0)")
    p.add_argument("--n", type=int, default=500, help="samples per point (digits in turn)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 8.0, 15.0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--percentile", type=float, default=0.995, help="dynamic thresholding's p")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-row", type=int, default=10, help="samples per picture row")
    p.add_argument("--out", default="bench_out/thresholding")
    args = p.parse_args(argv)
    run = load(args.run)
    kind = check_run(run)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.per_row = min(args.per_row, args.n)
    rows = sweep(run, args)
    reference = saturation(load_dataset(run.data.name, "test").images)
    note = (f"{args.n} samples per point ({kind}-conditional, digits in turn), {args.sampler}-{args.steps}, "
            f"seed {args.seed}; dynamic percentile {args.percentile}; run {args.run} (step {run.step}). "
            f"saturated: |x| >= 1 - 1/255 after the clamp to [-1, 1]; raw: the sampler's output before it.")
    text = table(rows, reference, note)
    (Path(args.out) / "thresholding.md").write_text(text)
    (Path(args.out) / "thresholding.json").write_text(json.dumps(
        {"run": args.run, "step": run.step, "conditioning": kind, "n": args.n, "sampler": args.sampler,
         "steps": args.steps, "percentile": args.percentile, "test_split": reference, "points": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
