"""Imagen's cascade at digit scale: base 14 x 14 + super-resolution 14 -> 28 (with and without
noise conditioning augmentation in training, at several augmentation levels at sampling)
against one 28 x 28 text model of about the same total parameter count.

    hirune train imagen-base-mnist5k; hirune train imagen-sr-mnist5k
    hirune train imagen-sr-noaug-mnist5k; hirune train imagen-single-mnist5k
    python benchmarks/imagen_cascade.py --base runs/imagen-base-mnist5k --sr runs/imagen-sr-mnist5k \\
        --sr-noaug runs/imagen-sr-noaug-mnist5k --single runs/imagen-single-mnist5k [--n 500] [--levels 0 0.1 0.3]

Training time per 100 steps at batch 64 on 2 CPU threads (20 steps each, machine shared):
imagen-base 21 s, imagen-sr(-noaug) 49 s, imagen-single 99 s; parameters 2.04 M + 2.06 M
(cascade) vs 4.31 M (single).  Same CPU budget: base + SR at 1000 steps each (~12 min) vs the
single model at about 700 steps (`hirune train imagen-single-mnist5k steps=700`).

Each contestant draws `--n` images from captions naming the digits in turn ("a handwritten
zero", "a handwritten one", ...), guided at `--scale` (the base and single models) and
`--sr-scale` (the SR models), sampler `--sampler` with `--steps` steps.  The cascade rows:
base samples, upsampled and noised to the sampling level a (fixed, seeded), then SR; the same
base samples for every SR run and level.  Scores: the shipped mnist5k evaluator's Frechet
distance to the test split (and real-vs-real) and the share classified as the digit named.
Writes OUT/results.json, OUT/results.md (the markdown table, also printed) and OUT/grid.png
(one row per contestant: the digits 0..9 twice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hirune.data.captions import caption
from hirune.families import superres
from hirune.inference.cascade import check_cascade
from hirune.metrics.evaluator import evaluate_images
from hirune.training import load
from hirune.viz import image_grid


def _params(run) -> int:
    return sum(p.numel() for p in run.model.parameters())


def _denoiser(run, scale: float):
    return run.denoiser if scale == 1.0 else run.guide("cfg", scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True)
    p.add_argument("--sr", required=True)
    p.add_argument("--sr-noaug", default=None)
    p.add_argument("--single", required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    p.add_argument("--scale", type=float, default=3.0, help="CFG scale of the base and single models")
    p.add_argument("--sr-scale", type=float, default=1.0, help="CFG scale of the SR models")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/imagen_cascade")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base, single = load(args.base), load(args.single)
    srs = {"sr (aug in training)": load(args.sr)}
    if args.sr_noaug:
        srs["sr (no aug)"] = load(args.sr_noaug)
    for sr in srs.values():
        check_cascade(base, sr)
    if single.config.low_res or single.sample_shape != next(iter(srs.values())).sample_shape:
        raise ValueError("--single must be a plain text run at the SR runs' image size (e.g. imagen-single-mnist5k)")

    labels = torch.arange(args.n) % 10
    prompts = [caption(int(y)) for y in labels]
    kw = dict(sampler=args.sampler, steps=args.steps, seed=args.seed, progress=False)
    low, _ = base.generate(args.n, denoiser=_denoiser(base, args.scale), prompts=prompts, **kw)
    low = low.x.clamp(-1, 1)
    rows, pictures = [], []

    def score(name: str, images: torch.Tensor, params: int, **extra) -> None:
        result = evaluate_images("mnist5k", images.clamp(-1, 1), labels)
        row = {"contestant": name, "params": params, **extra, "frechet_distance": result["frechet_distance"],
               "frechet_real_vs_real": result["frechet_real_vs_real"], "accuracy": result["class_accuracy"]}
        rows.append(row)
        pictures.append(images[:20])
        print(json.dumps(row), flush=True)

    for name, sr in srs.items():
        for level in args.levels:
            high, _ = sr.generate(args.n, denoiser=_denoiser(sr, args.sr_scale), prompts=prompts, low_res=low,
                                  aug_level=level, **kw)
            score(f"base + {name}", high.x, _params(base) + _params(sr), level=level,
                  noise_aug=sr.config.noise_aug)
    x, _ = single.generate(args.n, denoiser=_denoiser(single, args.scale), prompts=prompts, **kw)
    score("single 28 x 28", x.x, _params(single))
    score("base upsampled (no SR)", superres.upsample(low, 28), _params(base))

    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    lines = ["| contestant | params | training aug | sampling level | FD | accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        aug = f"{r['noise_aug']:g}" if "noise_aug" in r else "-"
        level = f"{r['level']:g}" if "level" in r else "-"
        lines.append(f"| {r['contestant']} | {r['params'] / 1e6:.2f} M | {aug} | {level} | "
                     f"{r['frechet_distance']:.2f} | {r['accuracy']:.1%} |")
    lines.append(f"\nreal vs real FD: {rows[0]['frechet_real_vs_real']:.2f}; n = {args.n}, CFG {args.scale:g} "
                 f"(SR {args.sr_scale:g}), {args.sampler} {args.steps} steps")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    image_grid(torch.cat(pictures).clamp(-1, 1), out / "grid.png", nrow=20)
    print(text)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(2)
    raise SystemExit(main())
