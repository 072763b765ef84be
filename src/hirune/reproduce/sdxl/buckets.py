"""SDXL's multi-aspect training (Podell et al. 2023, sec. 2.3, after NovelAI): the data
sorted into aspect-ratio buckets, every batch drawn from one bucket (in proportion to its
size), so one model learns to draw at every bucket's shape instead of cropping everything to
one square (`families.buckets`).

Measured on `aspect-mnist5k` (mnist5k-aspect: each digit on the canvas its ink's aspect fits
best -- 28 x 28, tall 32 x 24, wide 24 x 32 -- class-conditional): per bucket, n samples at the
bucket's shape, their labels drawn from the bucket's own training digits (its class mix: the
rare wide bucket holds mostly zeros, twos and fives), scored in the evaluator's features
(each image centred to 28 x 28, `metrics.evaluator.evaluator_view`): the share the evaluator
reads as the class asked, and the Frechet distance to the bucket's real test digits, beside
the bucket's real training digits against them (the same count: a small bucket's reference is
large too, so read each row against its own).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .common import draw, trained

PRESET, DATASET = "aspect-mnist5k", "mnist5k-aspect"
# budget -> training steps, samples a bucket, DDIM steps
SIZES = {"tiny": (2, 8, 2), "small": (700, 200, 25), "full": (1000, 200, 25)}


def _scores(net, images: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, real: torch.Tensor) -> dict:
    """The evaluator's accuracy on `images` against `labels`, their Frechet distance to `test`,
    and `real`'s (real digits of the bucket, not in `test`) beside it."""
    from ...metrics.evaluator import evaluator_view, features_and_logits, frechet_distance

    f_test, _ = features_and_logits(net, evaluator_view(net, DATASET, test))
    f_gen, logits = features_and_logits(net, evaluator_view(net, DATASET, images))
    f_real, _ = features_and_logits(net, evaluator_view(net, DATASET, real))
    return {"class_accuracy": float((logits.argmax(1) == labels).double().mean()),
            "frechet_distance": frechet_distance(f_gen, f_test),
            "frechet_real_vs_real": frechet_distance(f_real, f_test)}


def _bucket(run, b: int, train, test, n: int, steps: int, net) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Bucket b's samples and scores: (its row of measures, its samples, the first of its test
    digits of each class it holds)."""
    from ...data.buckets import recentre

    size = tuple(run.data.buckets[b])
    g = torch.Generator().manual_seed(b)
    mine, theirs = torch.nonzero(train.bucket == b).flatten(), torch.nonzero(test.bucket == b).flatten()
    labels = train.labels[mine[torch.randint(len(mine), (n,), generator=g)]]
    x = draw(run, n, steps, size=size, labels=labels)
    real = recentre(train.images[mine[torch.randperm(len(mine), generator=g)[:n]]], size)
    test_digits = recentre(test.images[theirs], size)
    scores = _scores(net, x, labels, test_digits, real)
    labels_here = test.labels[theirs].tolist()
    firsts = sorted({c: labels_here.index(c) for c in set(labels_here)}.values(), key=lambda i: labels_here[i])
    return {"bucket": f"{size[0]}x{size[1]}", "train_share": len(mine) / len(train.labels),
            "test_digits": len(theirs), "sample_shape": list(x.shape[-2:]), **scores}, x, test_digits[firsts]


def _canvas(rows: list[torch.Tensor], cell: int, gap: int = 2) -> torch.Tensor:
    """Rows of images (k, 1, h, w) in [-1, 1], each centred in a cell x cell tile on a grey ground
    (so each shape's frame shows): one picture in [0, 1]."""
    width = max(len(r) for r in rows) * (cell + gap) + gap
    out = torch.full((len(rows) * (cell + gap) + gap, width), 0.5)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            h, w = image.shape[-2:]
            top, left = gap + i * (cell + gap) + (cell - h) // 2, gap + j * (cell + gap) + (cell - w) // 2
            out[top: top + h, left: left + w] = (image[0] + 1) / 2
    return out


def _verdict(found: list[dict]) -> str:
    big = max(found, key=lambda r: r["train_share"])
    small = min(found, key=lambda r: r["train_share"])
    ratio = {r["bucket"]: r["frechet_distance"] / max(r["frechet_real_vs_real"], 1e-8) for r in found}
    words = ", ".join(f"{r['bucket']} {r['class_accuracy']:.0%} ({r['train_share']:.0%} of the data)" for r in found)
    return (f"class accuracy per bucket: {words}; Frechet distance over real vs real: "
            + ", ".join(f"{k} {v:.2g}x" for k, v in ratio.items())
            + f" -- the rarest bucket ({small['bucket']}) "
            + ("is drawn worse than the largest, as drawing buckets in proportion to their size predicts"
               if ratio[small["bucket"]] > ratio[big["bucket"]] else "is not drawn worse than the largest here"))


def buckets_note(budget: str) -> Report:
    from ...data import load_dataset
    from ...metrics.evaluator import load_evaluator

    steps, n, sample_steps = SIZES[budget]
    train, test, net = load_dataset(DATASET, "train"), load_dataset(DATASET, "test"), load_evaluator(DATASET)
    with tempfile.TemporaryDirectory() as tmp:
        run = trained(Path(tmp) / "aspect", PRESET, steps, budget)
        measured = [_bucket(run, b, train, test, n, sample_steps, net) for b in range(len(run.data.buckets))]
    found = [m for m, _, _ in measured]
    rows = [[r["bucket"], r["train_share"], r["test_digits"], r["class_accuracy"], r["frechet_distance"],
             r["frechet_real_vs_real"]] for r in found]
    notes = [f"{PRESET} trained {steps} steps; per bucket {n} samples at its shape (DDIM {sample_steps} steps, seed "
             "0), labels drawn from the bucket's training digits; scored in the evaluator's features against the "
             "bucket's test digits, beside its real training digits (the same count)",
             _verdict(found),
             "the figure: per bucket its first test digit of each class it holds, then a row of samples, each at "
             "its own shape"]
    data = {"budget": budget, "steps": steps, "n": n, "sample_steps": sample_steps, "buckets": found}
    pictures = [rows_ for _, x, real in measured for rows_ in (real[:10], x[:10])]

    def plot(path):
        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.6]})
        names = [r["bucket"] for r in found]
        at = torch.arange(len(names)).float()
        ax.bar(at - 0.2, [r["frechet_distance"] for r in found], 0.4, label="samples")
        ax.bar(at + 0.2, [r["frechet_real_vs_real"] for r in found], 0.4, label="real digits", color="grey")
        ax.set_xticks(at.tolist(), [f"{k}\nacc {r['class_accuracy']:.0%}" for k, r in zip(names, found)])
        ax.set(ylabel="Frechet distance to the bucket's test digits", title="per bucket (H x W)")
        ax.legend(fontsize=8)
        cell = max(max(s) for s in run.data.buckets) + 2
        pic.imshow(_canvas(pictures, cell).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        pic.axis("off")
        save(fig, path)
    return Report("sdxl-buckets", f"SDXL's aspect-ratio buckets: samples at each bucket's shape ({steps} steps, "
                                  f"n = {n})", ["bucket (H x W)", "share of training data", "test digits",
                                                "class accuracy", "Frechet distance", "real vs real"],
                  rows, notes, data, plot)
