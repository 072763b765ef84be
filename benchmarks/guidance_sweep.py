"""Guidance and editing with runs you keep: the guidance sweep of `hirune reproduce
guidance-digits` (one implementation: `hirune.reproduce.guided`) on a class-conditional run and a
noise-aware classifier run of your own, then inversion and editing of test digits with the same
run (the README's edits figure).

    python benchmarks/guidance_sweep.py [--train] [--scales 0 1 2 4] [--n 500] [--edits 100]

`hirune reproduce guidance-digits --budget full` measures the sweep from scratch in a temporary
folder; this script runs it on --cond and --classifier (--train first trains what is missing:
`hirune train vpred-mnist5k class_conditional=true out=runs/cond-mnist5k` and `hirune train
classifier-mnist5k out=runs/classifier-mnist5k`, about 13 and 5 minutes on 2 CPU cores), writes
the note's report folder (OUT/guidance-digits/: index.html, the JSON, the trade-off figure),
then the edits (OUT/edits.json, OUT/edits.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hirune.checkpoint import latest_checkpoint
from hirune.playbook.report import table
from hirune.reproduce import NOTES, guided
from hirune.reproduce.page import write_report
from hirune.training import load, preset_config, train
from hirune.viz import image_grid


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
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--n", type=int, default=500, help="samples per point (a multiple of 10)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--edits", type=int, default=100, help="test images to reconstruct and edit (0: skip)")
    p.add_argument("--edit-scale", type=float, default=2.0, help="CFG scale of both edit passes")
    p.add_argument("--out", default="bench_out/guidance")
    args = p.parse_args(argv)
    ensure("vpred-mnist5k", args.cond, {"class_conditional": True}, args.train)
    ensure("classifier-mnist5k", args.classifier, {}, args.train)
    run, classifier = load(args.cond), load(args.classifier)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, last = guided.sweep(run, classifier, args.scales, args.n, args.steps)
    size = {"data": run.data.name, "n": args.n, "sample_steps": args.steps, "scales": tuple(args.scales),
            "runs": (args.cond, args.classifier)}
    report = guided.guidance_report(results, last, size, (run.step, classifier.step))
    print(table(report))
    print(f"wrote {write_report(report, NOTES['guidance-digits'].shows, 'your runs', out / 'guidance-digits')}")
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
