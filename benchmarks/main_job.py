"""The main job's candidate recipes, each run the way a user runs it, then scored.

    python benchmarks/main_job.py [--only latent,pixel] [--samples 1000] [--seeds 0 1 2] [--out DIR] [--tiny]

Each candidate is one or more `hirune train ...` commands run in a fresh working folder, timed
from start to end: training (a latent recipe trains its autoencoder first, inside the command,
as on a fresh clone), the preview grids and the 500-sample `eval.json` the command writes.  Then
`hirune eval RUN --n SAMPLES --seed S` for each seed: the Frechet distance in the shipped
evaluator's features against the test split (mean and spread, max - min, over the seeds), the
class entropy (3.32 bits: all ten digits equally often) and the real-vs-real reference at that
many samples.  Prints the table, writes OUT/results.json (merged over calls, one entry per
candidate).  Run it alone on the machine: the times are wall-clock.

Candidates
  pixel       vpred-mnist5k: the main job until issue 24 (1.6 M-parameter UNet on 28 x 28 pixels,
              v-prediction, cosine betas, min-SNR-5, EMA 0.995, 1000 steps of 64)
  latent      ldm-mnist5k, the main job: kl-ae-mnist5k (f = 4, 500 steps of 32) then the same
              recipe on its 4 x 7 x 7 latents with a 1.7 M-parameter UNet
  --tiny      the same shapes on the 8 x 8 digits for seconds (the script's test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CANDIDATES = {  # name -> the `hirune train` commands, run in order; the last one's run is scored
    "pixel": [["vpred-mnist5k"]],
    "latent": [["ldm-mnist5k"]],
}
_TINY_NET = 'model_config={"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}'
_TINY_RUN = ["steps=2", "batch_size=8", "sample_every=2", "num_samples=4", "sample_steps=2", "eval_samples=8",
             _TINY_NET]
TINY = {
    "pixel": [["vpred-digits", *_TINY_RUN]],
    "latent": [["kl-ae-digits", "steps=2", "batch_size=8", "sample_every=0"],
               ["vpred-digits", "autoencoder=runs/kl-ae-digits", *_TINY_RUN]],
}


def hirune(args: list[str], cwd: Path) -> str:
    """Run `python -m hirune ARGS` in `cwd`; its stdout (stderr goes to the terminal: progress bars)."""
    done = subprocess.run([sys.executable, "-m", "hirune", *args], cwd=cwd, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if done.returncode:
        raise RuntimeError(f"hirune {' '.join(args)} exited with {done.returncode}:\n{done.stdout[-2000:]}")
    return done.stdout


def run_dir(commands: list[list[str]]) -> str:
    """The run the last command writes: its out=, else runs/<preset>."""
    last = commands[-1]
    return next((a.split("=", 1)[1] for a in last if a.startswith("out=")), f"runs/{last[0]}")


def measure(name: str, commands: list[list[str]], root: Path, samples: int, seeds: list[int],
            sample_steps: int | None) -> dict:
    """Time the commands in a fresh folder, then score the run at each seed."""
    import shutil

    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    for command in commands:
        hirune(["train", *command], work)
    job_s = time.perf_counter() - t0
    run = run_dir(commands)
    scores = []
    for seed in seeds:
        extra = ["--steps", str(sample_steps)] if sample_steps else []
        out = hirune(["eval", run, "--n", str(samples), "--seed", str(seed), *extra], work)
        scores.append(json.loads(out.strip().splitlines()[-1]))
    job = json.loads((work / run / "eval.json").read_text())
    fds = [s["frechet_distance"] for s in scores]
    return {"commands": [" ".join(["hirune", "train", *c]) for c in commands], "job_s": job_s,
            "job_frechet_500": job["frechet_distance"], "samples": samples, "seeds": seeds,
            "frechet": fds, "frechet_mean": statistics.fmean(fds), "frechet_spread": max(fds) - min(fds),
            "class_entropy_bits": statistics.fmean(s["class_entropy_bits"] for s in scores),
            "real_vs_real": scores[0]["frechet_real_vs_real"]}


def table(results: dict) -> str:
    lines = ["| candidate | whole job | Frechet (eval.json, 500) | Frechet (n, mean +- spread over seeds) | "
             "class entropy | real vs real |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['job_s'] / 60:.1f} min | {r['job_frechet_500']:.2f} | "
                     f"{r['frechet_mean']:.2f} +- {r['frechet_spread'] / 2:.2f} (n = {r['samples']}, "
                     f"{len(r['seeds'])} seeds) | {r['class_entropy_bits']:.2f} | {r['real_vs_real']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help=f"comma-separated, of {sorted(CANDIDATES)}")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/main_job")
    p.add_argument("--tiny", action="store_true", help="seconds, on the 8 x 8 digits (the test)")
    args = p.parse_args(argv)
    candidates = TINY if args.tiny else CANDIDATES
    names = args.only.split(",") if args.only else list(candidates)
    unknown = sorted(set(names) - set(candidates))
    if unknown:
        p.error(f"unknown candidates {unknown}; valid: {sorted(candidates)}")
    root = Path(args.out).resolve()
    path = root / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        results[name] = measure(name, candidates[name], root, args.samples, args.seeds, 2 if args.tiny else None)
        path.write_text(json.dumps(results, indent=1))
        print(f"{name}: {results[name]['job_s']:.0f} s, Frechet {results[name]['frechet_mean']:.2f}", flush=True)
    print(table({n: results[n] for n in names}))
    return results


if __name__ == "__main__":
    main()
