"""CogVideo in miniature (Hong et al. 2022): text to video as autoregression over image tokens,
started from a text-to-image run, against CogVideoX's figures (`hirune reproduce cogvideox`).

    python benchmarks/cogvideo.py [--root runs/cogvideo] [--n 200] [--scale 3] [--steps 240]
        [--interp-steps 400] [--image-steps 700] [--vq-steps 1000] [--image RUN] [--variants image scratch]
        [--out bench_out/cogvideo]

Trains (or reuses, when RUN/checkpoints hold the last step) under ROOT, one run at a time:
the VQ tokenizer and the dalle run on the still frames (`vq-ae-moving-stills`,
`dalle-moving-stills`), then the key-frame model (`cogvideo-moving-mnist5k`) in each variant
-- `image`: started from the dalle run (the temporal channels gated at 0), `scratch`: the same
network with every weight drawn (the same tokenizers) -- and one interpolation model
(`cogvideo-interp-moving-mnist5k`, started from the dalle run).  Each training's wall time is
recorded (ROOT/<run>/wall.json).

Each key-frame variant is scored on N clips, the prompts naming every digit and motion in turn
(seed 0, classifier-free guidance at SCALE on the logits), by `evaluation.video` -- the shipped
evaluator's accuracy of the named digit per frame, the share of clips moving the named way,
temporal consistency, the per-frame Frechet distance -- as drawn at gap 4 (5 frames), at gap 2
interpolated once (9 frames at gap 1: CogVideoX's clips) and at gap 4 interpolated twice (17).
Writes OUT.md, OUT.json and OUT_<variant>_<frames>.gif.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hirune.training import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.video_io import write_gif

VARIANTS = {"image": {}, "scratch": {"from_scratch": True}}
SCHEDULES = (("5 key frames, gap 4", 4, False), ("gap 2, interpolated once", 2, True),
             ("gap 4, interpolated twice", 4, True))


def trained(root: Path, name: str, preset: str, steps: int, **extra) -> tuple[Path, float | None]:
    """The run ROOT/name trained `steps` steps (reused when its final checkpoint exists), and the
    wall seconds its training took (as recorded when it was trained here)."""
    out = root / name
    if not (out / "checkpoints" / f"step_{steps:08d}").exists():
        cfg = {"steps": steps, "ckpt_every": steps, "out": str(out), "resume": out.exists(), **extra}
        start = time.perf_counter()
        train(preset_config(preset, cfg))
        (out / "wall.json").write_text(json.dumps({"steps": steps, "seconds": time.perf_counter() - start}))
    wall = out / "wall.json"
    return out, json.loads(wall.read_text())["seconds"] if wall.exists() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/cogvideo"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance on the logits (1: off)")
    p.add_argument("--steps", type=int, default=240, help="steps of each key-frame variant")
    p.add_argument("--interp-steps", type=int, default=400)
    p.add_argument("--image-steps", type=int, default=700, help="steps of the dalle run on the still frames")
    p.add_argument("--vq-steps", type=int, default=1000, help="steps of the VQ tokenizer on the still frames")
    p.add_argument("--image", type=Path, default=None, help="a trained dalle run on the still frames (default: "
                   "train ROOT/vq and ROOT/dalle)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("bench_out/cogvideo"))
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vq_s = dalle_s = None
    if args.image is not None:
        dalle = args.image
    else:
        vq, vq_s = trained(args.root, "vq", "vq-ae-moving-stills", args.vq_steps)
        dalle, dalle_s = trained(args.root, "dalle", "dalle-moving-stills", args.image_steps, tokenizer=str(vq))
    interp_dir, interp_s = trained(args.root, "interp", "cogvideo-interp-moving-mnist5k", args.interp_steps,
                                   image_model=str(dalle))
    interp = load(interp_dir)
    rows = ["| variant | clips | parameters | training | frame accuracy | direction | temporal consistency | "
            "per-frame FD |", "|---|---|---|---|---|---|---|---|"]
    results = {"wall_seconds": {"vq": vq_s, "dalle": dalle_s, "interp": interp_s}}
    for name in args.variants:
        run_dir, seconds = trained(args.root, name, "cogvideo-moving-mnist5k", args.steps, image_model=str(dalle),
                                   **VARIANTS[name])
        results["wall_seconds"][name] = seconds
        run = load(run_dir)
        parameters = sum(p.numel() for p in run.model.parameters())
        for label, gap, interpolate in SCHEDULES:
            extra = {"interpolator": interp} if interpolate else {}
            start = time.perf_counter()
            metrics = run.evaluate(args.n, seed=0, gap=gap, scale=args.scale, **extra)
            metrics.update(parameters=parameters, sampling_seconds=time.perf_counter() - start)
            results[f"{name}/{label}"] = metrics
            out, _ = run.generate(20, seed=0, gap=gap, scale=args.scale, **extra)
            write_gif(out.x, args.out.parent / f"{args.out.name}_{name}_{out.x.shape[2]}.gif")
            minutes = f"{args.steps} steps, {seconds / 60:.1f} min" if seconds else f"{args.steps} steps"
            rows.append(f"| {name}: {label} | {metrics['frames']} frames | {parameters:,} | {minutes} | "
                        f"{metrics['frame_accuracy']:.3f} | {metrics['direction_accuracy']:.3f} | "
                        f"{metrics['temporal_consistency']:.3f} | {metrics['frechet_distance_frames']:.1f} |")
            print(rows[-1], flush=True)
    for label, _, _ in SCHEDULES:
        m = results[f"{args.variants[0]}/{label}"]
        rows.append(f"| real test clips | {m['frames']} frames | | | {m['real_frame_accuracy']:.3f} | "
                    f"{m['real_direction_accuracy']:.3f} | {m['real_temporal_consistency']:.3f} | "
                    f"{m['frechet_real_vs_real_frames']:.1f} (train vs test) |")
    # the interpolation run alone: real key frames at gap 2 filled in to 17 frames
    m = interp.evaluate(args.n, seed=0, gap=2, scale=args.scale)
    results["interp/real key frames at gap 2"] = m
    minutes = f"{args.interp_steps} steps, {interp_s / 60:.1f} min" if interp_s else f"{args.interp_steps} steps"
    rows.append(f"| interpolation of real key frames at gap 2 (drawn frames: PSNR {m['psnr_drawn_frames']:.1f} dB) | "
                f"17 frames | {sum(p.numel() for p in interp.model.parameters()):,} | {minutes} | "
                f"{m['frame_accuracy']:.3f} | {m['direction_accuracy']:.3f} | {m['temporal_consistency']:.3f} | "
                f"{m['frechet_distance_frames']:.1f} |")
    text = "\n".join(rows)
    print(text)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
