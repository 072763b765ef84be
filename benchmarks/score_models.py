"""Score models on a 2-D toy with a known density: NCSN and the three score SDEs, with and
without the likelihood weighting, scored on samples and on held-out NLL.

    python benchmarks/score_models.py [--dataset eight_gaussians] [--steps 3000]

Each contestant trains with its preset (the same MLP, optimizer and steps).  Samples:
10 000 points with the preset's sampler (annealed Langevin over NCSN's levels,
predictor-corrector for the SDEs) and, for the SDEs, the probability-flow ODE (RK45);
sliced Wasserstein distance to the held-out split beside its real-vs-real value.  NLL:
the run's `nll` on 2000 held-out points (probability-flow ODE, exact divergence)
beside the true density's NLL of the same points.  Writes OUT/score_models.md and .json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hirune import sample
from hirune.checkpoint import latest_checkpoint
from hirune.data import load_dataset
from hirune.metrics.distances import sliced_wasserstein
from hirune.training import load, preset_config, train

CONTESTANTS = {
    "ncsn": ("ncsn", {}),
    "vesde": ("vesde", {}),
    "vpsde": ("vpsde", {}),
    "subvpsde": ("subvpsde", {}),
    "vpsde, likelihood weighting": ("vpsde", {"weighting": "likelihood"}),
    "subvpsde, likelihood weighting": ("subvpsde", {"weighting": "likelihood"}),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="eight_gaussians")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--nll", type=int, default=2000)
    p.add_argument("--out", default="bench_out/score_models")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.out)
    test = load_dataset(args.dataset, "test").data[: args.n].double()
    floor = sliced_wasserstein(load_dataset(args.dataset, "train").data[: args.n].double(), test)
    rows = {}
    for label, (family, extra) in CONTESTANTS.items():
        preset = f"{family}-{args.dataset.replace('_', '-')}"
        run_dir = out / label.replace(", ", "-").replace(" ", "-")
        if latest_checkpoint(run_dir) is None:
            train(preset_config(preset, {"steps": args.steps, "sample_every": 0, "ckpt_every": args.steps,
                                         "out": str(run_dir), **extra}))
        run = load(run_dir)
        row = {"preset": preset, **extra}
        with torch.no_grad():
            x = sample(run.denoiser, (args.n, 2), run.config.sampler, run.config.sample_steps, seed=1).x
            row[f"sw_{run.config.sampler}"] = sliced_wasserstein(x.double(), test)
            if family != "ncsn":
                x = sample(run.denoiser, (args.n, 2), "rk45", 2, seed=1).x
                row["sw_ode"] = sliced_wasserstein(x.double(), test)
        row.update(run.nll(args.nll))
        rows[label] = row
        print(label, json.dumps({k: v for k, v in row.items() if k.startswith(("sw", "nll"))}), flush=True)
    lines = ["| model | preset | SW, preset sampler | SW, probability-flow ODE | test NLL (nats) |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        sw = next(v for k, v in r.items() if k.startswith("sw_") and k != "sw_ode")
        ode = f"{r['sw_ode']:.4f}" if "sw_ode" in r else "-"
        lines.append(f"| {label} | `{r['preset']}` | {sw:.4f} | {ode} | {r['nll_nats']:.3f} +- {r['nll_stderr']:.3f} |")
    truth = next(iter(rows.values())).get("nll_true_nats")
    table = "\n".join(lines) + f"\n\nReal vs real SW: {floor:.4f}." + (
        f" True NLL of the same test points: {truth:.3f} nats." if truth is not None else "")
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_models.md").write_text(table + "\n")
    (out / "score_models.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
