"""SDXL's conditioning tricks at digit scale (Podell et al. 2023), each measured on what it is for.

    python benchmarks/sdxl.py [--parts micro offset refiner] [--root runs/sdxl] [--n 300]
        [--steps-scale 1.0] [--micro-model unet|dit] [--out bench_out/sdxl]

Trains (or reuses, when RUN/checkpoints exist) small runs under ROOT, then measures:

* micro -- `sdxl-micro-mnist5k` (each image shrunk to an original height of 7..28 and
  upscaled, cut at offsets of up to 4 pixels, the network told both) beside the same
  augmentations untold (`micro_conditioning=false`, SDXL's ablation).  Sharpness: the mean
  squared Laplacian (`micro.high_frequency_energy`) of samples asked for original heights
  7, 14, 28, against the test digits degraded to those heights.  Crop: the ink's centre of
  mass of samples asked for crops (-4, -4), (0, 0), (4, 4): its move from (0, 0) against the
  asked (+4, 0, -4) pixels.  Frechet distance at the full size, uncropped, against untold.
* offset -- `offset-noise-mnist5k` (eps prediction, linear schedule, on digits at a random
  brightness) at noise_offset 0 and 0.1: the std of per-image mean brightness of the
  samples against the test split's (0.38), and the Frechet distance.
* refiner -- a base (the main job's recipe) read at two checkpoints, and a refiner trained on
  the 200 lowest levels only: base alone against base + refiner (hand-over at 0.2), and the
  base trained for as many more steps as the refiner took (the same training budget).

All runs share one small UNet (32 channels, [1, 2, 2], one ResBlock a level, attention at 7 x
7) and sample with DDIM, 25 steps, seed 0.  Writes OUT.md, OUT.json and OUT_*.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hirune.data import load_dataset
from hirune.families import micro
from hirune.inference.generate import generate
from hirune.inference.refine import refine
from hirune.metrics.evaluator import evaluate_images
from hirune.training import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.viz import image_grid

UNET = {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [4],
        "head_channels": 32}
STEPS = 25
# the DiT of dit-mnist5k (1.57 M parameters, 4 x 4 patches), at its preset's learning rate
DIT = {"model": "dit", "lr": 1e-3, "model_config": {"hidden_size": 128, "depth": 5, "num_heads": 4, "patch_size": 4}}


def trained(root: Path, name: str, preset: str, steps: int, **extra):
    """The run ROOT/name trained `steps` steps (reused when its final checkpoint exists)."""
    out = root / name
    if not (out / "checkpoints" / f"step_{steps:08d}").exists():
        cfg = {"model_config": UNET, "steps": steps, "eval_samples": 0, "sample_every": 0,
               "ckpt_every": min(steps, extra.pop("ckpt_every", steps)), "out": str(out), "resume": out.exists(),
               **extra}
        train(preset_config(preset, cfg))
    return out


def draw(run, n: int, **options) -> torch.Tensor:
    return generate(run, n, "ddim", STEPS, seed=0, progress=False, **options)[0].x.clamp(-1, 1)


def fd(images: torch.Tensor, dataset: str) -> float:
    return evaluate_images(dataset, images)["frechet_distance"]


def micro_part(args, root: Path) -> tuple[list[str], dict]:
    steps = round(800 * args.steps_scale)
    suffix, network = ("", {}) if args.micro_model == "unet" else ("-dit", DIT)
    told = load(trained(root, "micro-told" + suffix, "sdxl-micro-mnist5k", steps, **network))
    untold = load(trained(root, "micro-untold" + suffix, "sdxl-micro-mnist5k", steps, micro_conditioning=False,
                          **network))
    test = load_dataset("mnist5k", "test").data
    out, rows, grid = {}, [], []
    rows += ["| original height asked | samples' high-frequency energy | test digits at that height |",
             "|---|---|---|"]
    for h in (7, 14, 28):
        x = draw(told, args.n, original_size=h)
        data = micro.degrade(test, torch.full((len(test),), h))
        out[f"hf_{h}"] = float(micro.high_frequency_energy(x).mean())
        out[f"hf_data_{h}"] = float(micro.high_frequency_energy(data).mean())
        rows.append(f"| {h} | {out[f'hf_{h}']:.4f} | {out[f'hf_data_{h}']:.4f} |")
        grid.append(x[:10])
    x_untold = draw(untold, args.n)
    out["hf_untold"] = float(micro.high_frequency_energy(x_untold).mean())
    rows.append(f"| (untold model) | {out['hf_untold']:.4f} | |")
    rows += ["", "| crop asked (top, left) | centre of mass (row, col) | moved by | asked to move by |",
             "|---|---|---|---|"]
    centre = {}
    for c in (-4, 0, 4):
        x = draw(told, args.n, crop=(c, c))
        centre[c] = micro.center_of_mass(x).mean(0)
        grid.append(x[:10])
    for c in (-4, 0, 4):
        moved = centre[c] - centre[0]
        out[f"com_{c}"] = centre[c].tolist()
        rows.append(f"| ({c}, {c}) | ({centre[c][0]:.2f}, {centre[c][1]:.2f}) | ({moved[0]:+.2f}, {moved[1]:+.2f}) "
                    f"| ({-c:+d}, {-c:+d}) |")
    com_untold = micro.center_of_mass(x_untold)
    com_data = micro.center_of_mass(test)
    out["com_std_untold"], out["com_std_data"] = com_untold.std(0).mean().item(), com_data.std(0).mean().item()
    out["com_std_told"] = micro.center_of_mass(draw(told, args.n)).std(0).mean().item()
    rows += ["", f"Spread of the centre of mass (std, pixels): told at (0, 0) {out['com_std_told']:.2f}, untold "
             f"{out['com_std_untold']:.2f}, test digits {out['com_std_data']:.2f}.", ""]
    out["fd_told"], out["fd_untold"] = fd(draw(told, args.n), "mnist5k"), fd(x_untold, "mnist5k")
    rows.append(f"Frechet distance at the full size, uncropped: told {out['fd_told']:.2f}, untold "
                f"{out['fd_untold']:.2f} ({steps} steps each, {args.n} samples).")
    image_grid(torch.cat(grid), args.out.parent / f"{args.out.name}_micro{suffix}.png", nrow=10)
    return rows, out


def offset_part(args, root: Path) -> tuple[list[str], dict]:
    steps = round(600 * args.steps_scale)
    test = load_dataset("mnist5k-brightness", "test").data
    data_std = float(test.mean((1, 2, 3)).std())
    rows = ["| noise offset | std of image means (test: %.3f) | mean of image means (test: %.3f) | Frechet distance |"
            % (data_std, float(test.mean())), "|---|---|---|---|"]
    out, grid = {"data_std": data_std}, []
    for offset in (0.0, 0.1):
        run = load(trained(root, f"offset-{offset}", "offset-noise-mnist5k", steps, noise_offset=offset))
        x = draw(run, args.n)
        means = x.mean((1, 2, 3))
        out[f"std_{offset}"], out[f"mean_{offset}"] = float(means.std()), float(means.mean())
        out[f"fd_{offset}"] = fd(x, "mnist5k-brightness")
        rows.append(f"| {offset} | {out[f'std_{offset}']:.3f} | {out[f'mean_{offset}']:.3f} | "
                    f"{out[f'fd_{offset}']:.2f} |")
        grid.append(x[:20])
    image_grid(torch.cat(grid), args.out.parent / f"{args.out.name}_offset.png", nrow=20)
    return rows, out


def refiner_part(args, root: Path) -> tuple[list[str], dict]:
    early, more, ref_steps = (round(s * args.steps_scale) for s in (600, 1000, 400))
    base_dir = trained(root, "refiner-base", "vpred-mnist5k", more, ckpt_every=early)
    refiner = load(trained(root, "refiner", "refiner-mnist5k", ref_steps))
    base_early = load(base_dir / "checkpoints" / f"step_{early:08d}")
    base_more = load(base_dir)
    out, rows = {}, ["| sampler | training steps | Frechet distance |", "|---|---|---|"]
    for name, run, steps in ((f"base at {early}", base_early, early), (f"base at {more}", base_more, more)):
        out[name] = fd(draw(run, args.n), "mnist5k")
        rows.append(f"| {name} alone | {steps} | {out[name]:.2f} |")
        x = refine(run, refiner, args.n, sampler="ddim", steps=STEPS, seed=0, progress=False)[0].x.clamp(-1, 1)
        out[f"{name} + refiner"] = fd(x, "mnist5k")
        rows.append(f"| {name} + refiner ({ref_steps} steps on t < 200) | {steps} + {ref_steps} | "
                    f"{out[f'{name} + refiner']:.2f} |")
    return rows, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["micro", "offset", "refiner"],
                   choices=["micro", "offset", "refiner"])
    p.add_argument("--root", type=Path, default=Path("runs/sdxl"))
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every run's steps (0.05: a smoke run)")
    p.add_argument("--micro-model", choices=["unet", "dit"], default="unet",
                   help="the network of the micro part (dit: the DiT of dit-mnist5k, which has absolute positions)")
    p.add_argument("--out", type=Path, default=Path("bench_out/sdxl"))
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    parts = {"micro": micro_part, "offset": offset_part, "refiner": refiner_part}
    text, results = [], {}
    for name in args.parts:
        rows, results[name] = parts[name](args, args.root)
        text += [f"### {name}", "", *rows, ""]
        print("\n".join(text[-len(rows) - 3:]), flush=True)
    args.out.with_suffix(".md").write_text("\n".join(text))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
