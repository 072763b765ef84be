"""Class accuracy and Frechet distance against guidance scale, for classifier-free and
classifier guidance on MNIST 5k: the README's guidance table and trade-off plot.

One class-conditional network serves both methods: trained with condition dropout
(p_uncond = 0.1), it is the conditional and unconditional model of classifier-free
guidance, and its unconditional mode (the null label) is the model that the noise-aware
classifier guides.  So at s = 0 both methods sample the same unconditional model, and at
s = 1 both aim at the conditional distribution (exactly so for CFG; through Bayes' rule
with a learned classifier for classifier guidance).

    python benchmarks/guidance_sweep.py [--train] [--scales 0 1 2 3 5] [--n 500]

--train first trains what is missing: `hirune train vpred-mnist5k class_conditional=true
out=runs/cond-mnist5k` and `hirune train classifier-mnist5k out=runs/classifier-mnist5k`
(about 13 and 5 minutes on 2 CPU cores).  Each point: n samples, n / 10 per class, DDIM
with trailing spacing, scored by hirune's evaluator (Frechet distance to the test split,
class accuracy of the intended labels).  Writes OUT/guidance.md, OUT/guidance.json,
OUT/guidance.png and a class grid per method at the largest scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hirune.checkpoint import latest_checkpoint
from hirune.inference.generate import generate, guide
from hirune.metrics.evaluator import evaluate_images
from hirune.training import load, preset_config, train
from hirune.viz import image_grid, tradeoff_plot


def ensure(preset: str, out: str, overrides: dict, do_train: bool) -> None:
    if latest_checkpoint(Path(out)) is not None:
        return
    if not do_train:
        raise SystemExit(f"{out} has no trained run; pass --train to train it ({preset})")
    train(preset_config(preset, {"out": out, **overrides}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cond", default="runs/cond-mnist5k", help="class-conditional run (trained with p_uncond > 0)")
    p.add_argument("--classifier", default="runs/classifier-mnist5k", help="noise-aware classifier run")
    p.add_argument("--train", action="store_true", help="train the runs that are missing")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 5.0])
    p.add_argument("--n", type=int, default=500, help="samples per point (a multiple of 10)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--edits", type=int, default=100, help="test images to reconstruct and edit (0: skip)")
    p.add_argument("--edit-scale", type=float, default=2.0, help="CFG scale of both edit passes")
    p.add_argument("--out", default="bench_out/guidance")
    args = p.parse_args(argv)
    ensure("vpred-mnist5k", args.cond, {"class_conditional": True}, args.train)
    ensure("classifier-mnist5k", args.classifier, {}, args.train)
    run, classifier = load(args.cond), load(args.classifier)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = run.class_labels(args.n, per_class=True)
    results: dict[str, list[dict]] = {"classifier-free": [], "classifier": []}
    for method, key in (("cfg", "classifier-free"), ("classifier", "classifier")):
        for s in args.scales:
            t0 = time.perf_counter()
            d = guide(run, method, s, classifier=classifier if method == "classifier" else None)
            x, _ = generate(run, args.n, "ddim", args.steps, "trailing", seed=0, denoiser=d, labels=labels)
            m = evaluate_images(run.data.name, x.x, labels)
            m.update({"scale": s, "seconds": time.perf_counter() - t0})
            results[key].append(m)
            print(json.dumps({"method": key, **m}))
            if s == max(args.scales):
                image_grid(x.x, out / f"grid_{method}_s{s:g}.png", nrow=args.n // 10)
    (out / "guidance.json").write_text(json.dumps(results, indent=1))
    ref = results["classifier-free"][0]["frechet_real_vs_real"]
    rows = ["| scale s | CFG class accuracy | CFG Frechet distance | classifier-guidance class accuracy "
            "| classifier-guidance Frechet distance |", "|---|---|---|---|---|"]
    for a, b in zip(results["classifier-free"], results["classifier"]):
        rows.append(f"| {a['scale']:g} | {a['class_accuracy']:.1%} | {a['frechet_distance']:.1f} | "
                    f"{b['class_accuracy']:.1%} | {b['frechet_distance']:.1f} |")
    rows.append(f"\nReal vs real Frechet distance: {ref:.1f}. {args.n} samples per point "
                f"({args.n // 10} per class), DDIM-{args.steps} trailing; model {args.cond} "
                f"(step {run.step}), classifier {args.classifier} (step {classifier.step}).")
    (out / "guidance.md").write_text("\n".join(rows) + "\n")
    tradeoff_plot(results, out / "guidance.png", reference=ref,
                  title="MNIST 5k: guidance scale s (labels) trades diversity for class accuracy")
    print("\n".join(rows))
    if args.edits:
        edits = edit_report(run, args, out)
        (out / "edits.json").write_text(json.dumps(edits, indent=1))
        print(json.dumps(edits))
    return 0


def edit_report(run, args, out: Path) -> dict:
    """Exact DDIM inversion of test digits under their own label, then (a) regeneration
    under the same label: reconstruction PSNR; (b) regeneration under label + 1 (mod 10)
    with CFG at --edit-scale: how often the evaluator reads the target digit."""
    import torch

    from hirune.data import load_dataset
    from hirune.inference.editing import edit, invert, regenerate
    from hirune.metrics import psnr
    from hirune.metrics.evaluator import load_evaluator

    test = load_dataset(run.data.name, "test")
    x, y = test.data[:args.edits], test.labels[:args.edits]
    t0 = time.perf_counter()
    noise = invert(run, x, labels=y, steps=args.steps).x
    back = regenerate(run, noise, labels=y, steps=args.steps).x
    p = psnr(back, x)
    target = (y + 1) % 10
    edited, _ = edit(run, x, y, target, scale=args.edit_scale, steps=args.steps)
    with torch.no_grad():
        read = load_evaluator(run.data.name)(edited).argmax(1)
    k = min(10, len(x))
    image_grid(torch.cat([x[:k], back[:k], edited[:k]]), out / "edits.png", nrow=k)
    return {"images": len(x), "steps": args.steps, "reconstruction_psnr_db_mean": float(p.mean()),
            "reconstruction_psnr_db_min": float(p.min()), "edit_scale": args.edit_scale,
            "edit_success_rate": float((read == target).double().mean()),
            "edit_kept_source_rate": float((read == y).double().mean()), "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    raise SystemExit(main())
