"""The main job's training step on a CPU with 1 and 2 torch threads, on a quiet machine and beside
one other CPU-bound process, with OpenMP's threads spinning while they wait (its default, ACTIVE)
or sleeping (OMP_WAIT_POLICY=PASSIVE): which setting degrades gracefully when the cores are shared.

    python benchmarks/cpu_threads.py [--preset vpred-mnist5k] [--steps 12] [--tiny]

Each configuration runs in its own process (OpenMP reads its wait policy once, at start): the
preset's `Trainer` takes 2 warm-up steps, then `--steps` timed optimizer steps (the loop's step,
read every step as on a CPU).  "loaded": a competitor process runs float32 matmuls on one thread
for the whole measurement (another job on the machine).  Prints the median and the slowest step
of each, and each loaded setting's slowdown against the same setting quiet; writes OUT.json.
Run it on an otherwise idle machine.
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

COMPETITOR = ("import torch, time\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
              "end = time.time() + 3600\nwhile time.time() < end:\n    a = (a @ a).tanh_()\n")


def worker(preset: str, threads: int, steps: int, tiny: bool) -> dict:
    """Time `steps` training steps of `preset` on `threads` threads (in this process)."""
    import tempfile

    import torch

    from hirune.training import Trainer, preset_config

    torch.set_num_threads(threads)
    overrides = {"batch_size": 8, "model_config": {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                                                    "attention_resolutions": []}} if tiny else {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Trainer(preset_config(preset, {**overrides, "out": tmp}), distributed=False)
        data, labels = run.training_data()
        run.model.train()
        for _ in range(2):
            run.train_step(data, labels)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            run.train_step(data, labels)
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "max_s": max(times), "mean_s": statistics.fmean(times)}


def measure(preset: str, threads: int, policy: str, loaded: bool, steps: int, tiny: bool) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env={**os.environ, "OMP_NUM_THREADS": "1"}) \
        if loaded else None
    try:
        if competitor:
            time.sleep(1.0)  # let it take its core
        cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--threads", str(threads),
               "--steps", str(steps)] + (["--tiny"] if tiny else [])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="vpred-mnist5k")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tiny", action="store_true", help="a small UNet at batch 8 (a test of the script)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench_out/cpu_threads")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.preset, args.threads[0], args.steps, args.tiny)))
        return 0
    rows = []
    for loaded in (False, True):
        for policy in ("ACTIVE", "PASSIVE"):
            for threads in args.threads:
                r = measure(args.preset, threads, policy, loaded, args.steps, args.tiny)
                rows.append({"threads": threads, "wait_policy": policy, "loaded": loaded, **r})
                print(f"threads {threads}, {policy:7s}, {'loaded' if loaded else 'quiet '}: median "
                      f"{r['median_s']:.3f} s a step, slowest {r['max_s']:.3f} s", flush=True)
    quiet = {(r["threads"], r["wait_policy"]): r["median_s"] for r in rows if not r["loaded"]}
    lines = ["| threads | OMP wait policy | quiet s/step | loaded s/step | slowdown | loaded slowest |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["loaded"]:
            q = quiet[(r["threads"], r["wait_policy"])]
            r["slowdown"] = r["median_s"] / q
            lines.append(f"| {r['threads']} | {r['wait_policy']} | {q:.3f} | {r['median_s']:.3f} | "
                         f"{r['slowdown']:.2f}x | {r['max_s']:.3f} |")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"preset": args.preset, "steps": args.steps, "cpus": os.cpu_count(), "tiny": args.tiny}
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
