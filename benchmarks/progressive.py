"""Progressive training of CogVideoX in miniature (Yang et al. 2024, sec. 3.2): low resolution
first, then high, with the positions of the larger grid extrapolated or interpolated.

    python benchmarks/progressive.py [--root runs/progressive] [--vae RUN] [--n 200]
        [--steps-scale 1.0] [--scale 4] [--out bench_out/progressive]

Trains (or reuses, when RUN/checkpoints exist) under ROOT, all with the preset transformer on
the latents of the same video VAE (default: train ROOT/vae):

* low         -- `cogvideox-moving-mnist5k-16`: the clips pooled to 16 x 16 (2 x 2 tokens a frame), 1500 steps;
* extrapolate -- `cogvideox-progressive-moving-mnist5k`: 32 x 32 from low's weights, RoPE on integer positions
                 (CogVideoX's choice), 750 steps;
* interpolate -- the same with the positions mapped onto low's grid (`rope_scaling=interpolate`);
* scratch     -- `cogvideox-moving-mnist5k` at 32 x 32 from the start, the same 750 steps, and EQUAL_STEPS
                 (the CPU time of low and 750 steps at 32 x 32 together: a 16 x 16 step costs STEP_COST_16 of one
                 at 32 x 32).

Rows: each run, and low's network at 32 x 32 before any step there under each position
setting (what the positions alone carry over).  Each is scored on a fixed-draw loss at 32 x 32
(the v-loss on 512 training clips at one fixed draw of times and noise: the same draw for
every row; low at 16 x 16 on its own clips) and on N sampled clips, the prompts naming every
digit and motion in turn (DDIM 50, seed 0, classifier-free guidance at SCALE): the shipped
evaluator's accuracy of the named digit per frame, direction, temporal consistency, per-frame
Frechet distance (`evaluation.video`; 16 x 16 clips are measured upsampled, beside the real
16 x 16 clips).  Writes OUT.md, OUT.json, OUT_<row>.gif and OUT.png (two clips of every row,
"a three moving left" and "a seven moving right", frame by frame).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hirune.families import Batch
from hirune.training import load
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer
from hirune.evaluation.video import on_canvas
from hirune.video_io import frame_strip, write_gif



def trained(root: Path, name: str, preset: str, steps: int, **extra) -> Path:
    """The run ROOT/name trained `steps` steps (reused when its final checkpoint exists)."""
    from hirune.training.loop import train

    out = root / name
    if not (out / "checkpoints" / f"step_{steps:08d}").exists():
        cfg = {"steps": steps, "sample_every": 0, "ckpt_every": steps, "out": str(out), "resume": out.exists(),
               **extra}
        train(preset_config(preset, cfg))
    return out


def write_results(out: Path, rows: list[str], results: dict) -> None:
    """Print the table `rows` and write it to OUT.md, and `results` to OUT.json."""
    text = "\n".join(rows)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


SCALINGS = ("extrapolate", "interpolate")
STEP_COST_16 = 0.73   # measured by --measure-cost: 237 ms a step at 16 x 16, 324 ms at 32 x 32 (one thread, batch 32)
EQUAL_STEPS = 750 + round(1500 * STEP_COST_16)
SHOWN = (3, 17)        # of the 20 clips: "a three moving left", "a seven moving right"


def fixed_draw_loss(family, n: int = 512, seed: int = 0) -> float:
    """The family's training loss on n of its training clips spread over the set, at one draw
    of times and noise from `seed` (the same clips and draw for every network of a shape)."""
    data, _ = family.training_data()
    idx = (torch.arange(n) * len(data)) // n
    draw = family.draw(n, torch.Generator(device=family.device).manual_seed(seed))
    family.model.eval()
    with torch.no_grad():
        return float(family.loss(family.model, Batch(data[idx], None, idx), draw, 0).loss)


def step_seconds(preset: str, vae: str, steps: int = 40) -> float:
    """The median wall time of a training step of `preset` (after 10 warm-up steps), in this process."""
    import time

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(preset_config(preset, {"out": out, "sample_every": 0, "autoencoder": vae}))
        data, labels = trainer.training_data()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(data, labels)
            times.append(time.perf_counter() - start)
    times = sorted(times[10:])
    return times[len(times) // 2]


def prepared(preset: str, out: Path, **extra):
    """The prepared family of `preset` (its training data encoded once), to score networks in."""
    return Trainer(preset_config(preset, {"out": str(out), "sample_every": 0, **extra})).family


def network(run: Path, scaling: str | None = None, size: int | None = None):
    """The EMA network of a trained run; with `size`, the same weights built for latents of
    that size under `scaling` (`families.progressive`: positions interpolated onto the run's grid)."""
    from hirune.families.progressive import resized_config
    from hirune.models import build_model

    model = load(run).model
    if size is None:
        return model
    c = model.config
    moved = build_model("cogvideox", **resized_config(c, c.sample_frames, size, {"rope_scaling": scaling}, str(run)))
    moved.load_state_dict(model.state_dict())
    return moved


def score(family, model, args) -> tuple[dict, object]:
    """`model` (the architecture of the family's own network) in the family: the fixed-draw
    loss, the video measures of N clips and 20 clips for a GIF."""
    family.model.load_state_dict(model.state_dict())
    family.model.config = model.config  # the positions (rope_scaling, rope_base) are the config's
    loss = fixed_draw_loss(family)
    guided = family.guide("cfg", args.scale) if args.scale != 1.0 else None
    metrics = family.evaluate(args.n, steps=50, seed=0, denoiser=guided)
    out, _ = family.generate(20, steps=50, seed=0, progress=False, denoiser=guided)
    metrics["fixed_draw_loss"] = loss
    return metrics, out.x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/progressive"))
    p.add_argument("--vae", type=Path, default=None, help="a trained video VAE run (default: train ROOT/vae)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every run's steps (0.02: a smoke run)")
    p.add_argument("--scale", type=float, default=4.0, help="classifier-free guidance scale of the scored clips")
    p.add_argument("--out", type=Path, default=Path("bench_out/progressive"))
    p.add_argument("--measure-cost", action="store_true", help="time a step at 16 x 16 and at 32 x 32 first")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scaled = lambda steps: max(2, round(steps * args.steps_scale))  # noqa: E731
    vae = str(args.vae or trained(args.root, "vae", "video-vae-moving-mnist5k", scaled(500)))
    common = dict(autoencoder=vae, log_every=10)
    if args.measure_cost:
        low_s, high_s = (step_seconds(p, vae) for p in ("cogvideox-moving-mnist5k-16", "cogvideox-moving-mnist5k"))
        print(f"a step: {low_s * 1000:.1f} ms at 16 x 16, {high_s * 1000:.1f} ms at 32 x 32; ratio "
              f"{low_s / high_s:.3f} (STEP_COST_16 = {STEP_COST_16})", flush=True)
    low = trained(args.root, "low", "cogvideox-moving-mnist5k-16", scaled(1500), **common)
    # (row, gif name, network, steps at 16 x 16 and at 32 x 32)
    rows_to_score = [("low (16 x 16)", "low", network(low), scaled(1500), 0)]
    for scaling in SCALINGS:
        position = {"base": str(low), "model_config": {"rope_scaling": scaling}}
        high = trained(args.root, scaling, "cogvideox-progressive-moving-mnist5k", scaled(750), **common, **position)
        rows_to_score += [(f"low at 32 x 32, {scaling}, no step there", f"zero-shot-{scaling}",
                           network(low, scaling, 8), scaled(1500), 0),
                          (f"progressive, {scaling}", scaling, network(high), scaled(1500), scaled(750))]
    scratch = trained(args.root, "scratch", "cogvideox-moving-mnist5k", scaled(750), **common)
    rows_to_score.append(("scratch at 32 x 32", "scratch", network(scratch), 0, scaled(750)))
    equal = trained(args.root, "scratch-equal", "cogvideox-moving-mnist5k", scaled(EQUAL_STEPS), **common)
    rows_to_score.append(("scratch at 32 x 32, the CPU time of progressive", "scratch-equal", network(equal), 0,
                          scaled(EQUAL_STEPS)))
    rows = ["| run | steps at 16 / 32 | fixed-draw loss | frame accuracy | direction | temporal consistency | "
            "per-frame FD |", "|---|---|---|---|---|---|---|"]
    results, shown = {"zero prediction": {"fixed_draw_loss": None}}, []
    with tempfile.TemporaryDirectory() as tmp:
        families = {16: prepared("cogvideox-moving-mnist5k-16", Path(tmp) / "16", **common),
                    32: prepared("cogvideox-moving-mnist5k", Path(tmp) / "32", **common)}
        zero = fixed_draw_loss(families[32])  # the network as built predicts v = 0 (adaLN-Zero)
        for name, slug, model, steps_16, steps_32 in rows_to_score:
            metrics, clips = score(families[16 if name.startswith("low (") else 32], model, args)
            write_gif(clips, args.out.parent / f"{args.out.name}_{slug}.gif")
            shown.append(on_canvas(clips[list(SHOWN)]))
            metrics.update(steps_16=steps_16, steps_32=steps_32)
            results[name] = metrics
            rows.append(f"| {name} | {steps_16} / {steps_32} | {metrics['fixed_draw_loss']:.4f} | "
                        f"{metrics['frame_accuracy']:.3f} | {metrics['direction_accuracy']:.3f} | "
                        f"{metrics['temporal_consistency']:.3f} | {metrics['frechet_distance_frames']:.1f} |")
            print(rows[-1], flush=True)
    results["zero prediction"]["fixed_draw_loss"] = zero
    rows.append(f"| predicting v = 0 (the network as built) | | {zero:.4f} | | | | |")
    for name in ("low (16 x 16)", "scratch at 32 x 32"):
        real = results[name]
        rows.append(f"| real test clips ({'16 x 16' if name.startswith('low') else '32 x 32'}) | | | "
                    f"{real['real_frame_accuracy']:.3f} | {real['real_direction_accuracy']:.3f} | "
                    f"{real['real_temporal_consistency']:.3f} | |")
    frame_strip(torch.cat(shown), args.out.with_suffix(".png"), scale=2)
    write_results(args.out, rows, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
