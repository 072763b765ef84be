"""Trained models on a 2-D toy: rectified flow's reflow (Liu et al. 2023) beside minibatch-OT
flow matching, and the score models (NCSN and the three score SDEs of Song et al. 2021).

Unlike `sampling.py`'s notes, which use the exact mixture's denoiser so that every difference
is the sampler's, these train networks (the toy presets' MLP, `runs.train_preset`) on the
eight Gaussians, whose density is known in closed form: samples are measured by their sliced
Wasserstein distance to the held-out split, beside the distance between two real samples of
the same size (real vs real: the floor), and likelihoods beside the true density's NLL.
"""

from __future__ import annotations

import torch

from ..playbook.report import Report, pyplot, save
from .runs import held_out, run_folder, train_preset
from .sampling import one_thread

DATASET = "eight_gaussians"
PRESET = "flow-eight-gaussians"
# budget -> (training steps of each model, samples scored, teacher ODE steps drawing the reflow pairs, MLP)
REFLOW = {"tiny": (40, 1000, 2, {"hidden": 32, "depth": 2}), "small": (1500, 5000, 25, {}),
          "full": (3000, 10000, 50, {})}
EULER_STEPS = (1, 2, 4, 8, 16, 64)
REFLOW_MODELS = {"1-RF": "independent coupling (flow matching)", "OT-CFM": "minibatch OT coupling",
                 "2-RF": "reflow of 1-RF's own pairs"}


def reflow_note(budget: str) -> Report:
    """Rectified flow (Liu et al. 2023, sec. 3 and fig. 4): flow matching with independent noise
    (1-RF) learns a velocity whose ODE paths cross and bend; reflow -- training a second flow
    (2-RF) on the (noise, sample) pairs of the first's own ODE -- straightens them, so a few
    Euler steps reach the quality that 1-RF needs many for.  Minibatch-OT flow matching (Tong
    et al. 2023) straightens by pairing each batch optimally instead.  The three train with the
    same preset, steps and MLP; measured: the sliced Wasserstein distance to held-out data after
    1 ... 64 Euler steps (k steps: k network evaluations), and the straightness S of the
    64-step paths (Liu et al. eq. 7; 0 = straight lines, where one Euler step is exact)."""
    from ..metrics.distances import sliced_wasserstein, straightness
    from ..sampling import sample
    from ..sampling.timesteps import time_grid

    steps, n, teacher_steps, mlp = REFLOW[budget]
    test, reference = held_out(DATASET, n)
    floor = sliced_wasserstein(reference, test)
    curves, nfe, straight = {}, {}, {}
    with run_folder("reflow") as folder:
        overrides = {"1-RF": {}, "OT-CFM": {"coupling": "ot"},
                     "2-RF": {"reflow_from": str(folder / "1-RF"), "reflow_steps": teacher_steps}}
        runs = {name: train_preset(folder, name, PRESET, steps, {"model_config": mlp, **extra} if mlp else extra)
                for name, extra in overrides.items()}
        pairs_error = _pairs_error(runs["1-RF"], folder / "2-RF", teacher_steps)
        with one_thread(), torch.no_grad():
            for name, run in runs.items():
                curves[name], nfe[name] = [], []
                for k in EULER_STEPS:   # a uniform grid of k + 1 times from 1 to 0: k Euler steps
                    out = sample(run.denoiser, (n, 2), "euler", k + 1, "uniform", seed=1,
                                 return_trajectory=k == EULER_STEPS[-1])
                    curves[name].append(sliced_wasserstein(out.x.double(), test))
                    nfe[name].append(out.nfe)
                straight[name] = straightness(out.trajectory, time_grid(run.process, k + 1, "uniform").tolist())
    rows = [[k, *(curves[name][i] for name in curves)] for i, k in enumerate(EULER_STEPS)]
    rows.append(["straightness", *(straight[name] for name in curves)])
    best = min(curves, key=lambda name: curves[name][0])
    notes = [f"sliced Wasserstein to {n} held-out points of {DATASET} after k Euler steps (k network evaluations); "
             f"real vs real (train against test, n = {n}): {floor:.4g}",
             f"each model {steps} steps of the {PRESET} preset" + (f" (MLP {mlp})" if mlp else "") +
             f"; 2-RF regresses on 1-RF's pairs, drawn by {teacher_steps} steps of its ODE "
             f"(the stored pairs match the teacher to {pairs_error:.2g})",
             "straightness of the 64-step paths: " + ", ".join(f"{k} {v:.3g}" for k, v in straight.items()) +
             f"; at one Euler step the best is {best} ({curves[best][0]:.4g}), against "
             + ", ".join(f"{k} {v[0]:.4g}" for k, v in curves.items() if k != best),
             "at 64 steps: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in curves.items()) +
             f" (real vs real {floor:.4g})"]
    data = {"euler_steps": list(EULER_STEPS), "curves": curves, "nfe": nfe, "straightness": straight,
            "real_vs_real": floor, "pairs_error": pairs_error, "n": n, "train_steps": steps,
            "teacher_steps": teacher_steps, "models": REFLOW_MODELS}

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in curves.items():
            ax.plot(EULER_STEPS, values, marker="o", label=f"{name}: {REFLOW_MODELS[name]} (S = {straight[name]:.3g})")
        ax.axhline(floor, color="grey", ls="--", label="real vs real")
        ax.set(xscale="log", yscale="log", xlabel="Euler steps (= network evaluations)",
               ylabel="sliced Wasserstein to held-out data", title=f"reflow straightens paths ({DATASET})")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        save(fig, path)
    return Report("reflow", f"few-step sampling of 1-RF, OT-CFM and 2-RF on {DATASET} (n = {n}; lower is better)",
                  ["Euler steps", *curves], rows, notes, data, plot)


def _pairs_error(teacher, student_dir, steps: int) -> float:
    """The largest gap between the data half of the student's stored reflow pairs and the
    teacher's ODE run again from their noise half (first 256 pairs): 0 up to float rounding
    when 2-RF was trained on 1-RF's own coupling."""
    from safetensors.torch import load_file

    from ..families.reflow import PAIRS
    from ..sampling import get_sampler
    from ..sampling.timesteps import time_grid

    pairs = load_file(str(student_dir / PAIRS))
    z, x = pairs["noise"][:256], pairs["data"][:256]
    with one_thread(), torch.no_grad():
        again = get_sampler(name=teacher.config.sampler)(teacher.denoiser, z, time_grid(teacher.process, steps)).x
    return float((again - x).abs().max())


# label -> (preset family, overrides): the same MLP, optimizer and steps for all
SCORE_MODELS = {
    "ncsn": ("ncsn", {}),
    "vesde": ("vesde", {}),
    "vpsde": ("vpsde", {}),
    "subvpsde": ("subvpsde", {}),
    "vpsde, likelihood weighting": ("vpsde", {"weighting": "likelihood"}),
    "subvpsde, likelihood weighting": ("subvpsde", {"weighting": "likelihood"}),
}
SCORE_LEVELS = 10   # NCSN's noise levels on the toys (the ncsn-* presets)
# budget -> (training steps, samples scored, held-out points whose NLL is computed, MLP, the models trained,
#            sampling: None = the preset's, else (predictor-corrector steps, Langevin steps per NCSN level))
SCORE = {"tiny": (30, 200, 8, {"hidden": 32, "depth": 2}, ("ncsn", "vpsde, likelihood weighting"), (20, 10)),
         "small": (800, 2000, 40, {}, tuple(SCORE_MODELS), None),
         "full": (3000, 10000, 1000, {}, tuple(SCORE_MODELS), None)}


def score_models_note(budget: str) -> Report:
    """Score models (Song & Ermon 2019; Song et al. 2021, secs. 3-4 and table 2) trained on the
    eight Gaussians, whose density is known: NCSN (denoising score matching over 10 geometric
    noise levels, annealed Langevin sampling) and the VE, VP and sub-VP SDEs in continuous time
    (lambda = sigma^2, predictor-corrector sampling), the VP and sub-VP also with the likelihood
    weighting lambda = g^2, which makes the loss a bound on the NLL (Song et al. 2021b, thm. 1).
    Measured: the sliced Wasserstein distance of the preset sampler's samples and of the
    probability-flow ODE's (RK45; NCSN, trained at its levels only, samples by annealed Langevin
    alone) to held-out data beside real vs real, and the held-out NLL through the probability-
    flow ODE (exact divergence, `run.nll`) beside the true density's NLL of the same points."""
    from ..metrics.distances import sliced_wasserstein
    from ..sampling import sample
    from .runs import true_nll

    steps, n, n_nll, mlp, models, cut = SCORE[budget]
    test, reference = held_out(DATASET, n)
    floor = sliced_wasserstein(reference, test)
    truth = true_nll(DATASET, test[:n_nll])
    results = {}
    with run_folder("score-models") as folder:
        for i, label in enumerate(models):
            family, extra = SCORE_MODELS[label]
            preset = f"{family}-{DATASET.replace('_', '-')}"
            run = train_preset(folder, f"model{i}", preset, steps, {"model_config": mlp, **extra} if mlp else extra)
            row = {"preset": preset, **extra}
            sampler, sampler_steps, options = run.config.sampler, run.config.sample_steps, {}
            if cut and sampler == "annealed_langevin":
                options["steps_per_level"] = cut[1]
            elif cut:
                sampler_steps = cut[0]
            with one_thread(), torch.no_grad():
                x = sample(run.denoiser, (n, 2), sampler, sampler_steps, seed=1, **options).x
                row.update(sampler=sampler, sampler_steps=sampler_steps, **options,
                           sw_sampler=sliced_wasserstein(x.double(), test))
                if family != "ncsn":
                    out = sample(run.denoiser, (n, 2), "rk45", seed=1)
                    row.update(sw_ode=sliced_wasserstein(out.x.double(), test), ode_nfe=out.nfe)
            with one_thread():
                row.update(run.nll(n_nll))
            results[label] = row
    rows = [[label, r["sampler"], r["sw_sampler"], r.get("sw_ode", "-"), r["nll_nats"], r["nll_stderr"]]
            for label, r in results.items()]
    best_nll = min(results, key=lambda label: results[label]["nll_nats"])
    best_sw = min(results, key=lambda label: min(results[label]["sw_sampler"], results[label].get("sw_ode", 1e9)))
    notes = [f"sliced Wasserstein to {n} held-out points of {DATASET}; real vs real: {floor:.4g}; each model "
             f"{steps} steps of its preset" + (f" (MLP {mlp})" if mlp else "") + ("; sampled with the preset's "
             "sampler and steps" if cut is None else f"; sampled with {cut[0]} predictor-corrector steps, "
             f"{cut[1]} Langevin steps per NCSN level"),
             f"NLL of {n_nll} held-out points through the probability-flow ODE (RK45, exact divergence; +- the "
             f"standard error); the true density's NLL of the same points: {truth:.4g} nats (no model can beat it "
             f"in expectation); the lowest: {best_nll} ({results[best_nll]['nll_nats']:.4g})",
             f"closest samples: {best_sw}; NCSN samples by annealed Langevin only: its network saw only its "
             f"{SCORE_LEVELS} noise levels, and its NLL is the VE ODE's through them"]
    for family in ("vpsde", "subvpsde"):
        plain, weighted = results.get(family), results.get(f"{family}, likelihood weighting")
        if plain and weighted:
            gap = plain["nll_nats"] - weighted["nll_nats"]
            noise = (plain["nll_stderr"] ** 2 + weighted["nll_stderr"] ** 2) ** 0.5
            notes.append(f"{family}: with the likelihood weighting {weighted['nll_nats']:.4g}, without "
                         f"{plain['nll_nats']:.4g}: {'lower' if gap > 0 else 'not lower'} by {abs(gap):.3g}, "
                         + ("beyond" if abs(gap) > 2 * noise else "within") + f" two standard errors of the "
                         f"difference ({2 * noise:.3g}) at {n_nll} points")
    data = {"models": results, "real_vs_real": floor, "true_nll": truth, "n": n, "n_nll": n_nll, "train_steps": steps}

    def plot(path):
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        labels, at = list(results), range(len(results))
        left.bar([i - 0.2 for i in at], [results[k]["sw_sampler"] for k in labels], 0.4, label="preset sampler")
        left.bar([i + 0.2 for i in at], [results[k].get("sw_ode", 0.0) for k in labels], 0.4,
                 label="probability-flow ODE")
        left.axhline(floor, color="grey", ls="--", label="real vs real")
        left.set(ylabel="sliced Wasserstein to held-out data", title="samples")
        right.errorbar(list(at), [results[k]["nll_nats"] for k in labels],
                       yerr=[results[k]["nll_stderr"] for k in labels], fmt="o")
        right.axhline(truth, color="grey", ls="--", label="the true density")
        right.set(ylabel="held-out NLL (nats)", title="likelihood (probability-flow ODE)")
        for ax in (left, right):
            ticks = [k.replace(", ", "\n").replace(" weighting", "\nweighting") for k in labels]
            ax.set_xticks(list(at), ticks, fontsize=7)
            ax.legend(fontsize=8)
        save(fig, path)
    return Report("score-models", f"score models trained on {DATASET}: samples and held-out likelihood",
                  ["model", "sampler", "SW, sampler", "SW, ODE", "NLL (nats)", "+-"], rows, notes, data, plot)
