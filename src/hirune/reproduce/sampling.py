"""DDIM against DDPM (Song et al. 2021, sec. 4 and table 1): quality against the number of steps
and the stochasticity eta, on hirune's exact 2-D Gaussian mixture (its denoiser is the true
posterior mean, so every difference is the sampler's, none a network's).

DDIM's update x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with c = eta sqrt(beta~) is
DDPM's ancestral step at eta = 1 and the probability-flow ODE's Euler step at eta = 0.  The
claim: with few steps the deterministic sampler (eta = 0) is the better one, and raising eta
brings the ancestral sampler's few-step error back; with many steps every sampler comes within
the spread of two exact samples' distance (the report's grey band), where they cannot be told
apart at this sample size.  Measured as the sliced Wasserstein distance of the
samples to a fresh sample of the mixture, beside that of two samples of the mixture itself (the
floor at this sample size).
"""

from __future__ import annotations

import torch

from ..playbook.report import Report, pyplot, save

ETAS = (0.0, 0.5, 1.0)
SIZES = {"tiny": (2000, (10, 50)), "small": (4000, (10, 20, 50, 100, 250, 1000)),
         "full": (20000, (10, 20, 50, 100, 250, 1000))}


def ddim_note(budget: str) -> Report:
    from ..metrics.distances import sliced_wasserstein
    from ..process import make_process
    from ..process.mixture import demo_mixture
    from ..sampling import sample

    n, grid = SIZES[budget]
    mixture, process = demo_mixture(), make_process("ddpm")
    denoiser = mixture.denoiser(process, "eps")
    truth = mixture.sample(n, torch.Generator().manual_seed(1))
    # the distance between two samples of the mixture itself, over 8 pairs: its mean and spread
    pairs = [sliced_wasserstein(mixture.sample(n, torch.Generator().manual_seed(10 + k)), truth) for k in range(8)]
    floor = sum(pairs) / len(pairs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (n, 2) tensors: one thread is as fast, and safe beside other work
    try:
        curves: dict[str, list[float]] = {"ddpm": []}
        curves.update({f"ddim eta={eta:g}": [] for eta in ETAS})
        for steps in grid:
            x = sample(denoiser, (n, 2), "ddpm", steps=steps, seed=0, dtype=torch.float64).x
            curves["ddpm"].append(sliced_wasserstein(x, truth))
            for eta in ETAS:
                x = sample(denoiser, (n, 2), "ddim", steps=steps, seed=0, dtype=torch.float64, eta=eta).x
                curves[f"ddim eta={eta:g}"].append(sliced_wasserstein(x, truth))
    finally:
        torch.set_num_threads(threads)
    rows = [[steps, *(curves[k][i] for k in curves)] for i, steps in enumerate(grid)]
    first, last = grid[0], grid[-1]
    notes = [f"sliced Wasserstein to a fresh sample of the mixture; two exact samples of the mixture: {floor:.4g} "
             f"on average, {min(pairs):.4g} to {max(pairs):.4g} over 8 pairs (n = {n}): differences within that "
             "spread are sampling noise, not the sampler's",
             f"at {first} steps: DDIM eta = 0 {curves['ddim eta=0'][0]:.4g}, DDPM {curves['ddpm'][0]:.4g}; at {last}: "
             f"{curves['ddim eta=0'][-1]:.4g} and {curves['ddpm'][-1]:.4g}",
             "eta = 1 is DDPM's ancestral step (the same numbers, the same noise)"]

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in curves.items():
            ax.plot(grid, values, marker="o", label=name)
        ax.axhspan(min(pairs), max(pairs), color="grey", alpha=0.2, label="two exact samples (8 pairs)")
        ax.set(xscale="log", yscale="log", xlabel="steps", ylabel="sliced Wasserstein to the mixture",
               title="DDIM against DDPM on the exact mixture")
        ax.legend()
        save(fig, path)
    data = {"curves": curves, "grid": list(grid), "floor": floor, "pairs": pairs, "n": n}
    return Report("ddim", f"sliced Wasserstein distance to the mixture (n = {n}; lower is better)",
                  ["steps", *curves], rows, notes, data, plot)
