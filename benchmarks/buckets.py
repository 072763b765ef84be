"""Samples of a bucketed run at each of its aspect-ratio buckets (SDXL's multi-aspect
training, `hirune.families.buckets`), beside real digits of that bucket.

    python benchmarks/buckets.py RUN [--n 200] [--steps 25] [--seed 0] [--out DIR]

RUN: a class-conditional diffusion run with buckets=true, e.g.
`hirune train aspect-mnist5k out=runs/aspect-mnist5k`.  For each bucket (H, W), n samples at
that shape (the classes in turn), scored by hirune's evaluator after centring them to
28 x 28 (`metrics.evaluator.evaluator_view`): the evaluator's class accuracy and the
Frechet distance to the test split of mnist5k-aspect (every bucket, centred), beside the
real-vs-real reference.  The share of each bucket in the training data is printed too.

Writes OUT/buckets.json, OUT/buckets.md and OUT/buckets.png: per bucket, a row of real
test digits of that bucket (the first of each class; an empty cell where the test split
has none of that class in the bucket), then a row of samples of classes 0..9, each image at
its own shape on a grey ground, so the canvases' frames show.
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


def picture(rows: list[list[torch.Tensor | None]], path: Path, cell: int = 36, gap: int = 2) -> Path:
    """Rows of images (1, H, W) in [-1, 1] (None: an empty cell), each centred in a cell x cell
    grey tile, 2x zoom."""
    from PIL import Image

    width = max(len(r) for r in rows) * (cell + gap) + gap
    canvas = torch.full((len(rows) * (cell + gap) + gap, width), 128, dtype=torch.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            if image is None:
                continue
            x = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            h, w = x.shape
            top, left = gap + i * (cell + gap) + (cell - h) // 2, gap + j * (cell + gap) + (cell - w) // 2
            canvas[top: top + h, left: left + w] = x
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(canvas.numpy())
    im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/buckets")
    args = ap.parse_args()
    run, out = load(args.run), Path(args.out)
    if not run.config.buckets or not run.config.class_conditional:
        raise SystemExit("this benchmark needs a class-conditional run with buckets=true (e.g. aspect-mnist5k)")
    from hirune.data.buckets import recentre

    train, test = load_dataset(run.data.name, "train"), load_dataset(run.data.name, "test")
    counts = torch.bincount(train.bucket, minlength=len(run.data.buckets)).tolist()
    results, rows = [], []
    for b, size in enumerate(run.data.buckets):
        start = time.time()
        x, labels = generate(run, args.n, steps=args.steps, seed=args.seed, size=size, progress=False)
        scores = evaluate_images(run.data.name, x.x, labels)
        results.append({"bucket": f"{size[0]}x{size[1]}", "train_share": counts[b] / sum(counts),
                        "class_accuracy": scores["class_accuracy"], "frechet_distance": scores["frechet_distance"],
                        "frechet_real_vs_real": scores["frechet_real_vs_real"], "seconds": time.time() - start})
        real = [recentre(test.data[mine[:1]], size)[0] if len(mine) else None  # None: no test digit c here
                for mine in (torch.nonzero((test.bucket == b) & (test.labels == c)).flatten() for c in range(10))]
        rows += [real, [x.x[torch.nonzero(labels == c).flatten()[0]] for c in range(10)]]
        print(json.dumps(results[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "buckets.json").write_text(json.dumps({"run": args.run, "step": run.step, "n": args.n,
                                                  "steps": args.steps, "results": results}, indent=1))
    table = ["| bucket (H x W) | share of training data | class accuracy | Frechet | real vs real |",
             "|---|---|---|---|---|"]
    table += [f"| {r['bucket']} | {r['train_share']:.3f} | {r['class_accuracy']:.3f} | {r['frechet_distance']:.1f} "
              f"| {r['frechet_real_vs_real']:.1f} |" for r in results]
    (out / "buckets.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(picture(rows, out / "buckets.png"))


if __name__ == "__main__":
    main()
