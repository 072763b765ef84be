"""Straighter paths, fewer steps: independent-coupling flow matching (1-rectified flow),
minibatch-OT flow matching, and 2-rectified flow (reflow of the first) on a 2-D toy.

    python benchmarks/reflow.py [--dataset eight_gaussians] [--steps 3000]

Trains the three with the `flow-<toy>` preset (the same MLP, optimizer and step count),
the reflow from the 1-RF's own pairs (`reflow_from`, 50 Heun steps of the teacher), then
samples 10 000 points of each with 1, 2, 4, 8, 16 and 64 Euler steps and reports the
sliced Wasserstein distance to the held-out split (beside its real-vs-real value) and the
straightness of the 64-step paths (0 = straight lines, where one Euler step is exact).
Writes OUT/reflow.md, OUT/reflow.json and OUT/reflow.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hirune import sample, time_grid
from hirune.checkpoint import latest_checkpoint
from hirune.data import load_dataset
from hirune.metrics.distances import sliced_wasserstein, straightness
from hirune.training import load, preset_config, train

EULER_STEPS = (1, 2, 4, 8, 16, 64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="eight_gaussians")
    p.add_argument("--steps", type=int, default=3000, help="training steps of each model")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--out", default="bench_out/reflow")
    args = p.parse_args(argv)
    out = Path(args.out)
    preset = f"flow-{args.dataset.replace('_', '-')}"
    runs = {"1-RF (independent coupling)": {}, "OT-CFM (minibatch OT coupling)": {"coupling": "ot"},
            "2-RF (reflow of 1-RF)": {"reflow_from": str(out / "rf1")}}
    dirs = dict(zip(runs, ("rf1", "ot", "rf2")))
    for name, extra in runs.items():
        run_dir = out / dirs[name]
        if latest_checkpoint(run_dir) is None:
            train(preset_config(preset, {"steps": args.steps, "sample_every": 0, "ckpt_every": args.steps,
                                         "out": str(run_dir), **extra}))
    test = load_dataset(args.dataset, "test").data[: args.n].double()
    ref = load_dataset(args.dataset, "train").data[: args.n].double()
    floor = sliced_wasserstein(ref, test)
    results = {}
    curves = []
    for name in runs:
        run = load(out / dirs[name])
        row = {}
        for k in EULER_STEPS:
            # a uniform grid of k + 1 times from 1 to 0: k Euler steps, k network evaluations
            with torch.no_grad():
                o = sample(run.denoiser, (args.n, 2), "euler", k + 1, "uniform", seed=1, return_trajectory=k == 64)
            assert o.nfe == k, (o.nfe, k)
            row[f"sw_{k}"] = sliced_wasserstein(o.x.double(), test)
            if k == 64:
                row["straightness"] = straightness(o.trajectory, time_grid(run.process, k + 1, "uniform").tolist())
        results[name] = row
        curves.append((name, [row[f"sw_{k}"] for k in EULER_STEPS]))
        print(json.dumps({"model": name, **row}))
    rows = ["| model | " + " | ".join(f"SW, {k} Euler step{'s' if k > 1 else ''}" for k in EULER_STEPS)
            + " | straightness |", "|---" * (len(EULER_STEPS) + 2) + "|"]
    for name, row in results.items():
        rows.append(f"| {name} | " + " | ".join(f"{row[f'sw_{k}']:.3f}" for k in EULER_STEPS)
                    + f" | {row['straightness']:.4f} |")
    rows.append(f"\n{args.dataset}, {args.n} samples; sliced Wasserstein real vs real: {floor:.3f}; "
                f"each model trained {args.steps} steps with the {preset} preset.")
    text = "\n".join(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reflow.md").write_text(text + "\n")
    (out / "reflow.json").write_text(json.dumps({"results": results, "sw_real_vs_real": floor}, indent=1))
    _plot(curves, floor, out / "reflow.png")
    print(text)
    return 0


def _plot(curves, floor: float, path: Path) -> None:
    from hirune.viz import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for name, sws in curves:
        ax.plot(EULER_STEPS, sws, "o-", label=name)
    ax.axhline(floor, color="gray", ls="--", lw=1, label="real vs real")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("Euler steps")
    ax.set_ylabel("sliced Wasserstein to held-out data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
