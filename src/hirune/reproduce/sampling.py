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

from contextlib import contextmanager

import torch

from ..playbook.report import Report, pyplot, save

@contextmanager
def one_thread():
    """One torch thread for the duration: on (n, 2) tensors it is as fast, and safe beside other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def exact_samples(mixture, n: int) -> tuple[torch.Tensor, list[float]]:
    """A sample of `mixture` to measure samplers against, and the sliced Wasserstein distances of
    8 more exact samples to it: the spread within which two exact samples already differ."""
    from ..metrics.distances import sliced_wasserstein

    truth = mixture.sample(n, torch.Generator().manual_seed(1))
    return truth, [sliced_wasserstein(mixture.sample(n, torch.Generator().manual_seed(10 + k)), truth)
                   for k in range(8)]


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
    truth, pairs = exact_samples(mixture, n)
    floor = sum(pairs) / len(pairs)
    with one_thread():
        curves: dict[str, list[float]] = {"ddpm": []}
        curves.update({f"ddim eta={eta:g}": [] for eta in ETAS})
        for steps in grid:
            x = sample(denoiser, (n, 2), "ddpm", steps=steps, seed=0, dtype=torch.float64).x
            curves["ddpm"].append(sliced_wasserstein(x, truth))
            for eta in ETAS:
                x = sample(denoiser, (n, 2), "ddim", steps=steps, seed=0, dtype=torch.float64, eta=eta).x
                curves[f"ddim eta={eta:g}"].append(sliced_wasserstein(x, truth))
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


GUIDANCE = {"tiny": (300, (0.0, 1.0, 3.0)), "small": (2000, (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)),
            "full": (10000, (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0))}


def guidance_note(budget: str) -> Report:
    """Classifier-free guidance (Ho & Salimans 2022, fig. 1 and sec. 4.1) on the exact mixture, its
    components as classes: guided = uncond + s (cond - uncond), s = 0 the unconditional model, 1 the
    conditional one.  As s grows the samples of class k land in component k ever more surely (the
    mixture's own classifier: fidelity) and crowd into its most typical part (their spread falls
    below the component's, and their distance to it rises: diversity lost)."""
    return _guidance(budget, "cfg")


def classifier_guidance_note(budget: str) -> Report:
    """Classifier guidance (Dhariwal & Nichol 2021, sec. 4 and fig. 3) on the exact mixture: the
    unconditional score plus s grad log p(y | x_t, t) from the exact noise-aware classifier.  At
    s = 1 that is the conditional score (Bayes), so the samples are the class; at every s,
    score + s grad log p(y | x) = (1 - s) grad log p(x) + s grad log p(x | y) is classifier-free
    guidance's combination: with exact models the two guidances are one (measured: the same
    numbers as `guidance_note`'s, to rounding)."""
    return _guidance(budget, "classifier")


def _guidance(budget: str, method: str) -> Report:
    """The trade-off table of `method` ("cfg": classifier-free; "classifier": an exact classifier's gradient)."""
    from ..metrics.distances import sliced_wasserstein
    from ..process import make_process
    from ..process.mixture import demo_mixture
    from ..sampling import sample
    from ..sampling.guidance import ClassifierFreeGuidance, ClassifierGuidance

    n, scales = GUIDANCE[budget]
    mixture, process = demo_mixture(), make_process("ddpm")
    model, classes = mixture.conditional_denoiser(process, "eps"), len(mixture.weights)
    uncond, classifier = mixture.denoiser(process, "eps"), mixture.noisy_classifier(process)
    truth = [mixture.component(k).sample(n, torch.Generator().manual_seed(100 + k)) for k in range(classes)]
    spread = sum(float(t.std(0).mean()) for t in truth) / classes
    rows, data = [], {"scales": list(scales), "accuracy": [], "spread": [], "sliced_wasserstein": []}
    with one_thread():
        for s in scales:
            acc = sw = std = 0.0
            for k in range(classes):
                y = torch.full((n,), k)
                guided = (ClassifierFreeGuidance(model, s, {"y": classes}) if method == "cfg" else
                          ClassifierGuidance(uncond, classifier, s))
                x = sample(guided, (n, 2), "ddim", steps=50, seed=k, dtype=torch.float64, cond={"y": y}).x
                acc += float((mixture.classify(x) == k).double().mean()) / classes
                sw += sliced_wasserstein(x, truth[k]) / classes
                std += float(x.std(0).mean()) / classes
            rows.append([s, acc, std, sw])
            for key, value in zip(("accuracy", "spread", "sliced_wasserstein"), (acc, std, sw)):
                data[key].append(value)
    notes = [f"{classes} classes = the mixture's components; DDIM 50 steps, n = {n} a class; accuracy by the "
             f"mixture's exact classifier; spread = the samples' std (mean over axes and classes); a component's own: "
             f"{spread:.4g}", "s = 0: the unconditional model (the labels ignored); s = 1: the conditional one"
             + ("" if method == "cfg" else " (Bayes: the exact classifier's gradient makes the class's score)")]
    data["component_spread"] = spread

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(data["spread"], data["accuracy"], marker="o")
        for s, x, y in zip(scales, data["spread"], data["accuracy"]):
            ax.annotate(f"s={s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axvline(spread, color="grey", ls="--", label="a component's own spread")
        ax.set(xlabel="spread of a class's samples (diversity)", ylabel="samples in their class (fidelity)",
               title=f"{'classifier-free' if method == 'cfg' else 'classifier'} guidance: fidelity against diversity")
        ax.legend()
        save(fig, path)
    name, title = ("guidance", "classifier-free") if method == "cfg" else ("classifier-guidance", "classifier")
    return Report(name, f"{title} guidance on the exact mixture (n = {n} a class)",
                  ["scale", "in their class", "spread", "sliced W to the class"], rows, notes, data, plot)


SDE = {"tiny": (4000, (20,)), "small": (4000, (20, 50, 100, 250, 1000)), "full": (10000, (20, 50, 100, 250, 1000))}
SDE_SAMPLERS = ("euler_maruyama", "pc", "heun")   # the reverse SDE, predictor-corrector, the probability-flow ODE


def score_sde_note(budget: str) -> Report:
    """Score SDEs (Song et al. 2021, secs. 4.1-4.3 and table 1) with the exact score of the mixture:
    the reverse SDE (Euler-Maruyama), predictor-corrector (one Langevin corrector step after each
    predictor step) and the probability-flow ODE (Heun), on the VP and the VE SDE, against the
    number of network evaluations.  The claims: the corrector improves the predictor at the same
    grid; the ODE reaches the same quality with far fewer evaluations; adaptive RK45 chooses its own.
    Measured here (the report): the ODE is within the exact samples' spread from the fewest
    evaluations on both SDEs; the corrector helps the VE SDE on a coarse grid, not the VP SDE."""
    from ..metrics.distances import sliced_wasserstein
    from ..process import make_process
    from ..process.mixture import demo_mixture
    from ..sampling import sample

    n, grid = SDE[budget]
    mixture = demo_mixture()
    truth, pairs = exact_samples(mixture, n)
    rows, data = [], {"grid": list(grid), "curves": {}, "pairs": pairs, "n": n}
    with one_thread():
        for name in ("vp", "ve"):
            process = make_process(name)
            denoiser = mixture.denoiser(process, "eps")
            for sampler in SDE_SAMPLERS + ("rk45",):
                points = []
                for steps in (grid if sampler != "rk45" else grid[:1]):
                    out = sample(denoiser, (n, 2), sampler, steps=steps, seed=0, dtype=torch.float64)
                    points.append((out.nfe, sliced_wasserstein(out.x, truth)))
                    rows.append([name, sampler, steps if sampler != "rk45" else "adaptive", out.nfe, points[-1][1]])
                data["curves"][f"{name} {sampler}"] = points
    notes = [f"sliced Wasserstein to a fresh sample of the mixture (n = {n}); two exact samples: {min(pairs):.4g} to "
             f"{max(pairs):.4g} over 8 pairs (differences within that spread are noise)",
             "NFE: network evaluations (pc: two a step, predictor and corrector; heun: two a step but the last)"]
    for key, points in data["curves"].items():
        inside = [nfe for nfe, d in points if d <= max(pairs)]
        notes.append(f"{key}: within the exact samples' spread from {inside[0]} evaluations" if inside else
                     f"{key}: not within the exact samples' spread on this grid")

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, name in zip(axes, ("vp", "ve")):
            for key, points in data["curves"].items():
                if key.startswith(name):
                    ax.plot(*zip(*points), marker="o", label=key.split()[1])
            ax.axhspan(min(pairs), max(pairs), color="grey", alpha=0.2, label="two exact samples")
            ax.set(xscale="log", yscale="log", xlabel="network evaluations", title=f"{name} SDE, exact score")
            ax.legend(fontsize=8)
        axes[0].set_ylabel("sliced Wasserstein to the mixture")
        save(fig, path)
    return Report("score-sde", f"score SDE samplers with the exact score (n = {n})",
                  ["SDE", "sampler", "steps", "NFE", "sliced W"], rows, notes, data, plot)


FLOW = {"tiny": (2000, (1, 4, 16)), "small": (4000, (1, 2, 4, 8, 16, 64)), "full": (10000, (1, 2, 4, 8, 16, 64, 256))}
FLOW_PROCESSES = {"rectified_flow": "velocity", "cond_ot": "velocity", "vp": "eps"}


def flow_note(budget: str) -> Report:
    """Flow matching's paths against the VP SDE's probability-flow ODE (Lipman et al. 2023, sec. 4 and
    fig. 3; Liu et al. 2023, sec. 2): with the exact velocity of the mixture, the straight-line
    interpolation x_t = (1 - t) x_0 + t eps (rectified flow; cond-OT with sigma_min) gives ODE paths
    that bend less than VP's, which the papers credit for sampling in fewer Euler steps.  Measured:
    the straightness S of the finest grid's paths (0: a straight line, where one Euler step is
    exact; `metrics.distances.straightness`) and the sliced Wasserstein distance after 1 ... N Euler
    steps.  On this mixture the paths are straighter (S 0.90 against 1.87) and yet VP's Euler steps,
    which end with the jump to x0_hat at t_min (one more evaluation), are ahead from 2 to 16 steps:
    straightness is not the only thing that sets the few-step error."""
    from ..metrics.distances import sliced_wasserstein, straightness
    from ..process import make_process
    from ..process.mixture import demo_mixture
    from ..sampling import sample
    from ..sampling.timesteps import default_spacing, time_grid

    n, grid = FLOW[budget]
    mixture = demo_mixture()
    truth, pairs = exact_samples(mixture, n)
    curves, straight = {}, {}
    with one_thread():
        for name, prediction in FLOW_PROCESSES.items():
            process = make_process(name)
            denoiser = mixture.denoiser(process, prediction)
            curves[name] = [sliced_wasserstein(sample(denoiser, (n, 2), "euler", steps=s, seed=0,
                                                      dtype=torch.float64).x, truth) for s in grid]
            fine = sample(denoiser, (n, 2), "euler", steps=grid[-1], seed=0, dtype=torch.float64,
                          return_trajectory=True)
            ts = time_grid(process, grid[-1], default_spacing(process))
            straight[name] = straightness(fine.trajectory[:len(ts)], ts)
    rows = [[steps, *(curves[k][i] for k in curves)] for i, steps in enumerate(grid)]
    rows.append(["straightness", *(straight[k] for k in curves)])
    notes = [f"sliced Wasserstein to the mixture after that many Euler steps of the exact ODE (n = {n}); two exact "
             f"samples: {min(pairs):.4g} to {max(pairs):.4g} over 8 pairs",
             f"straightness S of the {grid[-1]}-step paths (Liu et al. eq. 7, per unit time; 0 = straight)"]

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in curves.items():
            ax.plot(grid, values, marker="o", label=f"{name} (S = {straight[name]:.3g})")
        ax.axhspan(min(pairs), max(pairs), color="grey", alpha=0.2, label="two exact samples")
        ax.set(xscale="log", yscale="log", xlabel="Euler steps", ylabel="sliced Wasserstein to the mixture",
               title="straight paths sample in fewer steps")
        ax.legend(fontsize=8)
        save(fig, path)
    return Report("flow-matching", f"Euler steps of the exact ODE: flow matching's paths against VP's (n = {n})",
                  ["steps", *curves], rows, notes, {"grid": list(grid), "curves": curves, "straightness": straight,
                                                    "pairs": pairs, "n": n}, plot)
