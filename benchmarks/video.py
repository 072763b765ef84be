"""CogVideoX in miniature (Yang et al. 2024): text to video on the moving digits, and its ablations.

    python benchmarks/video.py [--variants cogvideox shared learned iid packed] [--root runs/video]
        [--n 200] [--steps-scale 1.0] [--scale 4] [--vae RUN] [--out bench_out/video]

Trains (or reuses, when RUN/checkpoints exist) under ROOT: the 3D causal VAE
(`video-vae-moving-mnist5k`), then the expert transformer (`cogvideox-moving-mnist5k`) on its
latents in each variant, all at the same steps, batch and CPU budget:

* cogvideox -- expert adaptive LayerNorm, 3D RoPE, explicit uniform times (the preset);
* shared    -- one adaptive LayerNorm for text and video (`experts=false`);
* learned   -- a learned (t, y, x) position table instead of 3D RoPE (`positions=learned`);
* iid       -- i.i.d. uniform times instead of explicit uniform ones (`explicit_uniform=false`);
* packed    -- a quarter of each batch trained as one-frame images (frame packing, `image_share=0.25`).

Each is scored on N clips, the prompts naming every digit and motion in turn (DDIM, 50
steps, seed 0, classifier-free guidance at SCALE, 4 by default): the shipped evaluator's accuracy of the named digit per frame, the share of
clips whose centre-of-mass path goes the named way, temporal consistency (the class read in
every frame the same), the per-frame Frechet distance; beside the same measures on real
test clips.  The loss's step-to-step spread is the std of each step's loss around its
25-step moving average over the second half of training (metrics.jsonl, every step).
Writes OUT.md, OUT.json and OUT_<variant>.gif.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hirune.training import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.video_io import write_gif

VARIANTS = {
    "cogvideox": {},
    "shared": {"model_config": {"experts": False}},
    "learned": {"model_config": {"positions": "learned"}},
    "iid": {"explicit_uniform": False},
    "packed": {"image_share": 0.25},
}


def trained(root: Path, name: str, preset: str, steps: int, **extra) -> Path:
    """The run ROOT/name trained `steps` steps (reused when its final checkpoint exists)."""
    out = root / name
    if not (out / "checkpoints" / f"step_{steps:08d}").exists():
        cfg = {"steps": steps, "sample_every": 0, "ckpt_every": steps, "out": str(out), "resume": out.exists(),
               **extra}
        train(preset_config(preset, cfg))
    return out


def loss_spread(run: Path, window: int = 25) -> float:
    """The std of each logged step's loss around its moving average, over the second half of the run."""
    losses = torch.tensor([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                           if '"loss"' in line], dtype=torch.float64)
    half = losses[len(losses) // 2:]
    window = max(1, min(window, len(half) - 1))
    kernel = torch.ones(1, 1, window, dtype=torch.float64) / window
    smooth = torch.nn.functional.conv1d(half[None, None], kernel)[0, 0]
    return float((half[window // 2: window // 2 + len(smooth)] - smooth).std())


def write_results(out: Path, rows: list[str], results: dict) -> None:
    """Print the table `rows` and write it to OUT.md, and `results` to OUT.json."""
    text = "\n".join(rows)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--root", type=Path, default=Path("runs/video"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every run's steps (0.02: a smoke run)")
    p.add_argument("--scale", type=float, default=4.0, help="classifier-free guidance scale of the scored clips")
    p.add_argument("--vae", type=Path, default=None, help="a trained video VAE run (default: train ROOT/vae)")
    p.add_argument("--out", type=Path, default=Path("bench_out/video"))
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scaled = lambda steps: max(2, round(steps * args.steps_scale))  # noqa: E731
    vae = args.vae or trained(args.root, "vae", "video-vae-moving-mnist5k", scaled(500))
    rows = ["| variant | parameters | frame accuracy | direction | temporal consistency | per-frame FD | "
            "loss spread |", "|---|---|---|---|---|---|---|"]
    results = {}
    for name in args.variants:
        extra = dict(VARIANTS[name])
        run_dir = trained(args.root, name, "cogvideox-moving-mnist5k", scaled(1500), autoencoder=str(vae),
                          log_every=1, **extra)
        run = load(run_dir)
        guided = run.guide("cfg", args.scale) if args.scale != 1.0 else None
        metrics = run.evaluate(args.n, steps=50, seed=0, denoiser=guided)
        metrics["parameters"] = sum(p.numel() for p in run.model.parameters())
        metrics["loss_spread"] = loss_spread(run_dir)
        results[name] = metrics
        out, _ = run.generate(20, steps=50, seed=0, progress=False, denoiser=guided)
        write_gif(out.x, args.out.parent / f"{args.out.name}_{name}.gif")
        rows.append(f"| {name} | {metrics['parameters']:,} | {metrics['frame_accuracy']:.3f} | "
                    f"{metrics['direction_accuracy']:.3f} | {metrics['temporal_consistency']:.3f} | "
                    f"{metrics['frechet_distance_frames']:.1f} | {metrics['loss_spread']:.4f} |")
        print(rows[-1], flush=True)
    real = results[args.variants[0]]
    rows.append(f"| real test clips | | {real['real_frame_accuracy']:.3f} | {real['real_direction_accuracy']:.3f} | "
                f"{real['real_temporal_consistency']:.3f} | {real['frechet_real_vs_real_frames']:.1f} (train vs test) "
                "| |")
    write_results(args.out, rows, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
