"""How long `hirune sample RUN --n 16` takes, end to end (a fresh process: import, load the
run, sample, write the grid), and how much of it is loading the run, for this source tree
and optionally an older one side by side:

    python benchmarks/sample_latency.py runs/ldm-mnist5k runs/reflow --old-src /tmp/old/src

Before the light loader (hirune <= 31bde1a), loading a run for sampling built a whole
training run: the dataset, AdamW, for latent diffusion the encoding of every training
image, for a reflow student the teacher's ODE over the whole dataset.  Each measurement is
the median of `--repeats` runs, one process at a time (run it alone on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# loading alone, in whichever API the tree has
LOAD = """
import sys, time
t = time.perf_counter()
try:
    from hirune.training import load
except ImportError:
    from hirune.trainer import load_run as load
run = load(sys.argv[1])
print(time.perf_counter() - t)
"""


def timed(cmd: list[str], src: Path, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - t


def load_seconds(run: str, src: Path, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", LOAD, run], check=True, env=env, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--old-src", type=Path, default=None, help="the src/ folder of an older hirune to compare")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    trees = {"this tree": SRC, **({"old": args.old_src} if args.old_src else {})}
    print(f"hirune sample RUN --n {args.n}: median of {args.repeats}, seconds (load alone in brackets)")
    print("| run | " + " | ".join(trees) + (" | old / this |" if len(trees) == 2 else " |"))
    print("|---|" + "---|" * (len(trees) + (len(trees) == 2)))
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            cells, totals = [], []
            for src in trees.values():
                cmd = [sys.executable, "-m", "hirune", "sample", run, "--n", str(args.n), "--out", f"{tmp}/s.png"]
                total = statistics.median(timed(cmd, src, args.threads) for _ in range(args.repeats))
                load = statistics.median(load_seconds(run, src, args.threads) for _ in range(args.repeats))
                cells.append(f"{total:.2f} ({load:.2f})")
                totals.append(total)
            ratio = [f"{totals[1] / totals[0]:.1f}x"] if len(totals) == 2 else []
            print(f"| {run} | " + " | ".join(cells + ratio) + " |")


if __name__ == "__main__":
    main()
