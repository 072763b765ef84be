"""Sampler overhead on a GPU: hirune's samplers vs diffusers' scheduler loops, same model.

The network dominates real sampling, so a sampler's own cost (coefficient lookups, host
syncs, elementwise updates) should be a small fraction of it.  For a small conv net at
batch 256 x 3 x 64 x 64 in bf16 autocast, this prints the time of N bare network calls,
hirune's DDIM / DPM-Solver++(2M) loops, and diffusers' DDIMScheduler /
DPMSolverMultistepScheduler loops (when installed), side by side.

    python benchmarks/sampler_overhead.py [--device cuda] [--steps 50] [--batch 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import hirune as H
from hirune.nn import timestep_embedding


class TinyNet(nn.Module):
    def __init__(self, ch: int = 64):
        super().__init__()
        self.inp = nn.Conv2d(3, ch, 3, padding=1)
        self.temb = nn.Linear(ch, ch)
        self.body = nn.Sequential(*[nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
                                    for _ in range(4)])
        self.out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x, t):
        h = self.inp(x) + self.temb(timestep_embedding(t, self.inp.out_channels))[:, :, None, None]
        return self.out(self.body(h))


def timed(fn, device, repeats=3):
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    dev, n = args.device, args.steps
    torch.manual_seed(0)
    net = TinyNet().to(dev).eval()
    process = H.DiscreteVP("scaled_linear")
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)

    @torch.no_grad()
    def model(x, t):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            return net(x, t).float()

    denoiser = H.Denoiser(model, process, "eps")
    ts = H.time_grid(process, n, "leading")
    tt = torch.full((args.batch,), 500.0, device=dev)
    rows = [("network alone (x%d)" % n, timed(lambda: [model(x, tt) for _ in range(n)], dev))]
    rows.append(("hirune ddim", timed(lambda: H.SAMPLERS["ddim"](denoiser, x, ts), dev)))
    rows.append(("hirune dpmpp_2m", timed(lambda: H.SAMPLERS["dpmpp_2m"](denoiser, x, ts), dev)))
    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    except ImportError:
        print("diffusers not installed: peer rows skipped")
    else:
        common = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

        def loop(sched):
            sched.set_timesteps(n, device=dev)
            y = x
            for t in sched.timesteps:
                y = sched.step(model(y, t.float().expand(len(y))), t, y).prev_sample
            return y

        ddim = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
        dpm = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                          timestep_spacing="leading")
        rows.append(("diffusers DDIMScheduler", timed(lambda: loop(ddim), dev)))
        rows.append(("diffusers DPMSolverMultistep", timed(lambda: loop(dpm), dev)))
    base = rows[0][1]
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch}x3x{args.size}x{args.size}, {n} steps")
    for label, sec in rows:
        print(f"  {label:30s} {sec * 1e3:8.1f} ms   x{sec / base:5.2f} of the bare network")


if __name__ == "__main__":
    main()
