"""Bits per dimension on the 8 x 8 digits for every family that has a likelihood, trained with
the same steps x batch and scored the same way.

A normalizing flow (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018) gives log p(x)
exactly by the change of variables.  A diffusion model or a flow-matching model has a density
too, through its probability-flow ODE (Song et al. 2021, eq. 13 and app. D.2): integrate
dx/dt = f(x, t) - g(t)^2 / 2 * score(x, t) from the data to the prior and add the integral of
the drift's divergence (estimated by Hutchinson's trace with one Rademacher probe per image).
Song, Durkan, Murray & Ermon (2021) showed that weighting the score-matching loss by
lambda(t) = g(t)^2 (the "likelihood weighting") makes it a bound on the NLL, and found that
it lowers bits/dim; the note measures whether it does at the budget.

Every contestant is its `hirune train` preset on the digits' training split (`runs.train_preset`):

    realnvp, glow        normalizing flows, exact log-likelihood (family normalizing_flow)
    ddpm                 eps-prediction, linear betas, 1000 discrete steps (fewer below full: SIZES)
    vpsde                VP SDE in continuous time, denoising score matching, lambda = sigma^2
    vpsde-likelihood     the same with lambda = g^2 (importance-sampled t)
    flow                 rectified flow matching

and each is scored on the same test digits (`evaluation.likelihood.nll_report`): the same
uniform dequantization (the dataset's 17 levels, one fixed seed) and the same discrete bound
for every family, the diffusion families through the ODE of their EMA model without x0
clipping (RK45 at the budget's tolerance; the full budget's 1e-5 is `hirune eval --nll`'s).
"""

from __future__ import annotations

import math
import time

from ..playbook.report import Report, pyplot, save
from .runs import run_folder, train_preset
from .sampling import one_thread

# name -> (preset, its settings beyond the preset's)
CONTESTANTS = {"realnvp": ("realnvp-digits", {}), "glow": ("glow-digits", {}), "ddpm": ("ddpm-digits", {}),
               "vpsde": ("vpsde-digits", {}), "vpsde-likelihood": ("vpsde-digits", {"weighting": "likelihood"}),
               "flow": ("flow-digits", {})}
# tiny: networks small enough to train and integrate in a fraction of a second each
_TINY_NETS = {"normalizing_flow": {"levels": 1, "steps": 1, "hidden": 8},
              "diffusion": {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}}
# The ODE of a discrete schedule is integrated piece by piece (`sampling.likelihood`): at least
# 7 evaluations for each of its T steps, 7000 for DDPM's T = 1000.  Below the full budget DDPM
# runs the linear schedule on fewer, larger steps: T = 100 at small with the betas scaled by
# 1000 / T (improved-diffusion's linear schedule for T != 1000), T = 10 at tiny.
_DDPM_SMALL = {"T": 100, "beta_start": 1e-3, "beta_end": 0.2}
_DDPM_TINY = {"T": 10, "beta_start": 1e-2, "beta_end": 0.5}
# budget -> training steps, batch, test digits scored (None: the whole split), ODE tolerance,
# networks (None: the presets'), DDPM's schedule (None: the preset's)
SIZES = {"tiny": dict(steps=2, batch=8, n=4, rtol=1e-2, nets=_TINY_NETS, ddpm=_DDPM_TINY),
         "small": dict(steps=300, batch=64, n=48, rtol=1e-4, nets=None, ddpm=_DDPM_SMALL),
         "full": dict(steps=3000, batch=64, n=None, rtol=1e-5, nets=None, ddpm=None)}


def score(run, family: str, n: int, rtol: float) -> dict:
    """The NLL of the first n test digits (`evaluation.likelihood.nll_report`): exact for a flow
    (`family` normalizing_flow), through the probability-flow ODE at `rtol` (Hutchinson's
    divergence) for the others."""
    from ..evaluation.likelihood import flow_log_prob, nll_report, ode_log_prob

    if family == "normalizing_flow":
        log_prob = flow_log_prob(run.model)
    else:
        log_prob = ode_log_prob(run.denoiser, run.model, image=True, rtol=rtol)
    with one_thread():
        return nll_report(run.data, n, 0, log_prob)


def train_and_score(folder, name: str, size: dict, n: int) -> dict:
    """Contestant `name` trained at `size` into folder/name, scored on n test digits."""
    from ..training import preset_config

    preset, extra = CONTESTANTS[name]
    config = preset_config(preset)
    family = config.family
    overrides = {"batch_size": size["batch"], **extra}
    if size["nets"] is not None:
        overrides["model_config"] = {**config.model_config, **size["nets"][family]}
    if size["ddpm"] is not None and name == "ddpm":
        overrides["process_config"] = size["ddpm"]
    start = time.perf_counter()
    run = train_preset(folder, name, preset, size["steps"], overrides)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    result = score(run, family, n, size["rtol"])
    return {"preset": preset, **overrides, "family": family, "steps": run.step, "batch": size["batch"],
            "parameters": sum(p.numel() for p in run.model.parameters()), "train_seconds": trained,
            "score_seconds": time.perf_counter() - start, **result}


def likelihood_note(budget: str) -> Report:
    """Every contestant at the budget's steps x batch: bits/dim on the same test digits."""
    from ..data import load_dataset

    size = SIZES[budget]
    n = size["n"] or len(load_dataset("digits", "test").data)
    with run_folder("likelihood") as folder:
        results = {name: train_and_score(folder, name, size, n) for name in CONTESTANTS}
    rows = []
    for name, r in results.items():
        how = r["nll_method"] + (f", {r['nll_nfe']} evaluations" if "nll_nfe" in r else "")
        rows.append([name, setting(r), r["parameters"],
                     round(r["train_seconds"], 1), r["bits_per_dim"], r["bits_per_dim_stderr"], how])
    data = {"budget": budget, "steps": size["steps"], "batch": size["batch"], "n": n, "rtol": size["rtol"],
            "results": results, "weighting": weighting_effect(results)}
    return Report("likelihood", f"bits/dim on {n} test digits, every family trained {size['steps']} steps x "
                                f"{size['batch']} (lower is better)",
                  ["model", "preset", "parameters", "training s", "bits/dim", "+-", "how computed"], rows,
                  notes(results, size, n, data["weighting"]), data, lambda path: plot(results, path))


def setting(result: dict) -> str:
    """The preset and what was set on it beyond steps, batch and the tiny networks."""
    words = [result["preset"]] + (["weighting=likelihood"] if result.get("weighting") else [])
    process = result.get("process_config")
    return " ".join(words + ([f"T={process['T']}"] if process else []))


def weighting_effect(results: dict) -> dict:
    """The likelihood weighting's change of the VP SDE's bits/dim, and whether it is resolved:
    larger than twice the standard error of the difference (the two errors added in quadrature)."""
    plain, weighted = results["vpsde"], results["vpsde-likelihood"]
    change = weighted["bits_per_dim"] - plain["bits_per_dim"]
    error = math.hypot(plain["bits_per_dim_stderr"], weighted["bits_per_dim_stderr"])
    return {"change": change, "stderr": error, "resolved": abs(change) > 2 * error}


def notes(results: dict, size: dict, n: int, weighting: dict) -> list[str]:
    """What the table says, in words that follow its numbers."""
    exact = {k: r for k, r in results.items() if r["family"] == "normalizing_flow"}
    ode = {k: r for k, r in results.items() if r["family"] != "normalizing_flow"}
    best_exact = min(exact, key=lambda k: exact[k]["bits_per_dim"])
    best_ode = min(ode, key=lambda k: ode[k]["bits_per_dim"])
    best = min(results, key=lambda k: results[k]["bits_per_dim"])
    lines = [f"each model its digits preset, {size['steps']} steps x batch {size['batch']}; {n} test digits, uniform "
             "dequantization (17 levels, one seed) and the discrete bound for all; flows exactly, the others through "
             f"the probability-flow ODE of the EMA model (RK45, rtol {size['rtol']:g}, one Rademacher probe per "
             "image); +-: the standard error over images, probe noise included",
             f"best: {best} ({results[best]['bits_per_dim']:.3f} bits/dim); best exact flow {best_exact} "
             f"({exact[best_exact]['bits_per_dim']:.3f}) against the best ODE likelihood {best_ode} "
             f"({ode[best_ode]['bits_per_dim']:.3f}): "
             + ("the exact flow is ahead" if exact[best_exact]["bits_per_dim"] < ode[best_ode]["bits_per_dim"]
                else "an ODE likelihood is ahead") + " at equal steps x batch"]
    change, error = weighting["change"], weighting["stderr"]
    verdict = ("lowers" if change < 0 else "raises") + " the VP SDE's bits/dim"
    lines.append(f"Song et al.'s likelihood weighting {verdict} by {abs(change):.3f} (+- {error:.3f}): "
                 + ("resolved at this budget" if weighting["resolved"] else "within twice its standard error, "
                    "not resolved at this budget")
                 + ("" if change < 0 or not weighting["resolved"] else
                    "; the paper's gain (after long training) does not show here"))
    nfe = {k: r["nll_nfe"] for k, r in ode.items()}
    T = (size["ddpm"] or {}).get("T", 1000)
    lines.append("network evaluations per ODE likelihood: " + ", ".join(f"{k} {v}" for k, v in nfe.items())
                 + f" (DDPM's ODE is integrated piece by piece across its T = {T} discrete steps"
                 + ("" if T == 1000 else "; below the full budget the linear schedule on fewer, larger steps, see "
                    "bits.SIZES") + ")")
    return lines


def plot(results: dict, path) -> None:
    """Bits/dim of each contestant with its standard error, exact flows and ODE likelihoods coloured apart."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(results)
    colours = ["tab:green" if results[k]["family"] == "normalizing_flow" else "tab:blue" for k in names]
    ax.bar(range(len(names)), [results[k]["bits_per_dim"] for k in names],
           yerr=[results[k]["bits_per_dim_stderr"] for k in names], color=colours, tick_label=names)
    ax.tick_params(axis="x", labelsize=8)
    ax.set(ylabel="bits/dim (test)", title="8x8 digits: exact flows (green) and probability-flow ODE (blue)")
    save(fig, path)
