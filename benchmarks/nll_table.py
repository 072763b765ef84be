"""Bits/dim on the 8x8 digits for every family, trained with the same budget and scored the
same way.

    python benchmarks/nll_table.py [--steps 3000] [--n 0]

Trains each contestant with its `hirune train` preset on the digits' training split (the
same steps x batch 64 for all), then reports the run's `nll` on the test split:
the same uniform dequantization (17 levels) and the same discrete bound for every family;
flows exactly, the others through the probability-flow ODE of the EMA model (RK45,
rtol 1e-5, Hutchinson divergence with one Rademacher probe per image).

    realnvp / glow     normalizing flows, exact log-likelihood (family normalizing_flow)
    ddpm               eps-prediction, linear betas, 1000 discrete steps
    vpsde              VP SDE in continuous time, denoising score matching, lambda = sigma^2
    vpsde-likelihood   the same with Song et al.'s likelihood weighting lambda = g^2
                       (importance-sampled t)
    flow               rectified flow matching

Writes OUT/nll_table.md and OUT/nll_table.json; runs are kept under OUT (delete one to
retrain it).  Run it alone on the machine (see docs/ARCHITECTURE.md, Tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hirune.checkpoint import latest_checkpoint
from hirune.data import load_dataset
from hirune.training import load, preset_config, train

CONTESTANTS = {
    "realnvp": ("realnvp-digits", {}),
    "glow": ("glow-digits", {}),
    "ddpm": ("ddpm-digits", {}),
    "vpsde": ("vpsde-digits", {}),
    "vpsde-likelihood": ("vpsde-digits", {"weighting": "likelihood"}),
    "flow": ("flow-digits", {}),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="training steps of every contestant (batch 64)")
    p.add_argument("--n", type=int, default=0, help="test images scored (0: the whole test split)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help=f"comma list of {list(CONTESTANTS)}")
    p.add_argument("--out", default="bench_out/nll")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        p.error(f"unknown contestants {unknown}; valid: {list(CONTESTANTS)}")
    torch.set_num_threads(2)
    out = Path(args.out)
    n = args.n or len(load_dataset("digits", "test").data)
    results_path = out / "nll_table.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in names:
        preset, extra = CONTESTANTS[name]
        run_dir = out / name
        row = results.get(name, {})
        if latest_checkpoint(run_dir) is None:
            start = time.perf_counter()
            train(preset_config(preset, {"steps": args.steps, "sample_every": 0, "ckpt_every": args.steps,
                                         "out": str(run_dir), **extra}))
            row["train_minutes"] = (time.perf_counter() - start) / 60
        run = load(run_dir)
        start = time.perf_counter()
        report = run.nll(n)
        row.update({"preset": preset, **extra, "steps": run.step, **report,
                    "params": sum(q.numel() for q in run.model.parameters()),
                    "eval_minutes": (time.perf_counter() - start) / 60})
        results[name] = row
        print(f"{name:18s} {row['bits_per_dim']:.3f} +- {row['bits_per_dim_stderr']:.3f} bits/dim  "
              f"({row['nll_method']})", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
    table = format_table(results)
    print(table)
    (out / "nll_table.md").write_text(table + "\n")
    return 0


def format_table(results: dict) -> str:
    lines = ["| model | preset | parameters | training (min, 2 CPU cores) | bits/dim (test) | how computed |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        how = r["nll_method"] + (f", {r['nll_nfe']} evaluations" if "nll_nfe" in r else "")
        weighting = " weighting=likelihood" if r.get("weighting") == "likelihood" else ""
        minutes = f"{r['train_minutes']:.1f}" if "train_minutes" in r else "-"
        lines.append(f"| {name} | `{r['preset']}{weighting}` | {r['params'] / 1e6:.2f} M | {minutes} | "
                     f"{r['bits_per_dim']:.3f} +- {r['bits_per_dim_stderr']:.3f} | {how} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
