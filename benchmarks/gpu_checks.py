"""Device checks for the theory core (run on a machine with CUDA):

every sampler runs on the GPU; deterministic samplers give the same samples on CUDA and
CPU in float64; stochastic samplers still pass the exact-score harness with CUDA noise;
a bf16 network still receives float32 times.

    python benchmarks/gpu_checks.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import hirune as H

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import GM, N, matches_mixture  # noqa: E402

DETERMINISTIC = {"ddim", "euler", "midpoint", "heun", "rk45", "dpmpp_2m"}


def main() -> int:
    assert torch.cuda.is_available(), "needs CUDA"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    failures = 0
    process = H.VPSDE()
    for name in sorted(H.SAMPLERS):
        # step counts where each method's discretisation error is inside the harness bounds
        steps = {"annealed_langevin": 30, "euler_maruyama": 500, "pc": 300, "euler": 200,
                 "ddpm": 1000}.get(name, 60)
        opts = {"steps_per_level": 50, "step_size": 5e-5} if name == "annealed_langevin" else {}
        proc = H.VESDE(0.01, 20) if name in ("annealed_langevin", "pc") else process
        spacing = "logsnr" if name in ("annealed_langevin", "dpmpp_2m") else None
        pred = "score" if proc is not process else "eps"
        t0 = time.perf_counter()
        gpu = H.sample(GM.denoiser(proc, pred), (N, 2), name, steps, spacing, dtype=torch.float64,
                       device="cuda", **opts)
        sec = time.perf_counter() - t0
        ok, err = matches_mixture(gpu.x.cpu())
        line = f"  {name:18s} harness {'ok  ' if ok else 'FAIL'} sw={err['sw']:.4f} nfe={gpu.nfe:4d} {sec:6.2f}s"
        if name in DETERMINISTIC:
            ts = H.time_grid(proc, 2 if name == "rk45" else steps, spacing)
            x = proc.prior_sample((N, 2), torch.Generator().manual_seed(0), torch.float64, t=float(ts[0]))
            cpu = H.SAMPLERS[name](GM.denoiser(proc, pred), x, ts).x
            gpu2 = H.SAMPLERS[name](GM.denoiser(proc, pred), x.cuda(), ts).x.cpu()
            diff = float((cpu - gpu2).abs().max())
            same = diff < 1e-9 or name == "rk45" and diff < 1e-4
            line += f"  cuda-vs-cpu max|diff| {diff:.2e} {'ok' if same else 'FAIL'}"
            ok = ok and same
        failures += not ok
        print(line)
    seen = {}

    def net(x, t):
        seen["t"] = t.dtype
        return torch.zeros_like(x)

    x = torch.randn(8, 4, 8, 8, device="cuda", dtype=torch.bfloat16)
    H.Denoiser(net, H.DiscreteVP(), "eps")(x, 999)
    print(f"  bf16 input -> network time dtype {seen['t']}")
    failures += seen["t"] != torch.float32
    print("all device checks passed" if not failures else f"{failures} device checks FAILED")
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
