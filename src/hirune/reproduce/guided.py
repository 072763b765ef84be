"""Guidance on real digits: class accuracy and Frechet distance against the guidance scale s,
for classifier-free guidance (Ho & Salimans 2022) and classifier guidance (Dhariwal & Nichol
2021, sec. 4), with trained networks (the `guidance` and `classifier-guidance` notes use the
exact mixture; this one asks what survives when both models are learned).

One class-conditional network serves both methods: trained with condition dropout (p_uncond =
0.1), it is the conditional and the unconditional model of classifier-free guidance,

    eps_s = eps(x, null) + s (eps(x, y) - eps(x, null)),

and its unconditional mode (the null label) is the model a noise-aware classifier guides,

    eps_s = eps(x, null) - s sigma_t grad_x log p_phi(y | x_t).

So at s = 0 both methods sample the same unconditional model, and at s = 1 both aim at the
conditional distribution -- exactly for CFG, through Bayes' rule and a learned classifier for
classifier guidance, so the two curves meet only as far as the classifier's gradient is the
conditional model's.  Past s = 1 guidance sharpens p(y | x)^s: class accuracy rises, and the
samples leave the data's spread, which the Frechet distance to the test split counts.

Measured: the vpred preset made class-conditional (`class_conditional=true`) and the noise-aware
classifier preset on the same cosine DDPM process (`classifier-DATA`), trained by
`runs.train_preset`; at each scale n samples (n / 10 per class, the same seed), DDIM with
trailing spacing, scored by the shipped evaluator (`metrics.evaluator.evaluate_images`: the
Frechet distance to the test split beside real vs real, the share read as the intended class).
"""

from __future__ import annotations

import math

from ..playbook.report import Report, pyplot, save
from .runs import run_folder, train_preset
from .sampling import one_thread

METHODS = {"classifier-free": "cfg", "classifier": "classifier"}
# tiny: networks trained for seconds (only the pipeline is checked)
_TINY_UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}
_TINY_CLASSIFIER = {"channels": 4, "channel_mult": [1, 2], "attention_resolutions": [2], "head_channels": 4}
# budget -> dataset, steps of the conditional network and of the classifier, batch, their networks
# (None: the presets'), scales, samples per point (a multiple of 10), DDIM steps
SIZES = {"tiny": dict(data="digits", steps=3, classifier_steps=3, batch=8, unet=_TINY_UNET,
                      classifier=_TINY_CLASSIFIER, scales=(0.0, 1.0, 3.0), n=20, sample_steps=4),
         "small": dict(data="digits", steps=400, classifier_steps=400, batch=64, unet=None, classifier=None,
                       scales=(0.0, 1.0, 2.0, 4.0), n=100, sample_steps=25),
         "full": dict(data="mnist5k", steps=1000, classifier_steps=1500, batch=64, unet=None, classifier=None,
                      scales=(0.0, 1.0, 2.0, 4.0), n=500, sample_steps=25)}


def train_pair(folder, size: dict):
    """(the class-conditional run, the noise-aware classifier run) trained at `size`."""
    data = size["data"]
    cond = {"class_conditional": True, "batch_size": size["batch"]}
    if size["unet"] is not None:
        cond["model_config"] = size["unet"]
    judge = {"batch_size": size["batch"]}
    if size["classifier"] is not None:
        judge["model_config"] = size["classifier"]
    return (train_preset(folder, "cond", f"vpred-{data}", size["steps"], cond),
            train_preset(folder, "classifier", f"classifier-{data}", size["classifier_steps"], judge))


def sweep(run, classifier, scales, n: int, steps: int) -> tuple[dict[str, list[dict]], dict]:
    """Each method at each scale: n samples (n / 10 per class, seed 0), DDIM-`steps` trailing,
    scored by the evaluator.  Returns ({method: [metrics with "scale"]}, {method: the samples
    at the largest scale})."""
    from ..inference.generate import generate, guide
    from ..metrics.evaluator import evaluate_images

    if n < 10 or n % 10:
        raise ValueError(f"n={n} is not valid: the samples are n / 10 per class; valid: a multiple of 10, >= 10")
    labels = run.class_labels(n, per_class=True)
    results: dict[str, list[dict]] = {name: [] for name in METHODS}
    last = {}
    with one_thread():
        for name, method in METHODS.items():
            for s in scales:
                d = guide(run, method, s, classifier=classifier if method == "classifier" else None)
                out, _ = generate(run, n, "ddim", steps, "trailing", seed=0, denoiser=d, labels=labels,
                                  progress=False)
                results[name].append({"scale": float(s), **evaluate_images(run.data.name, out.x, labels)})
                if s == max(scales):
                    last[name] = out.x
    return results, last


def guidance_digits_note(budget: str) -> Report:
    """The sweep at the budget's size; the table, the notes and the trade-off figure."""
    size = SIZES[budget]
    with run_folder("guidance-digits") as folder:
        run, classifier = train_pair(folder, size)
        results, last = sweep(run, classifier, size["scales"], size["n"], size["sample_steps"])
        steps = (run.step, classifier.step)
    return guidance_report(results, last, size, steps)


def guidance_report(results: dict[str, list[dict]], last: dict, size: dict, steps: tuple[int, int]) -> Report:
    """The table (one row per scale), the notes under it and the figure of a finished sweep.
    size: a `SIZES` entry, or for runs of your own {data, n, sample_steps, scales, runs: (the
    conditional run's name, the classifier's)}; steps: the two runs' training steps."""
    cfg, cg = results["classifier-free"], results["classifier"]
    rows = [[a["scale"], a["class_accuracy"], a["frechet_distance"], b["class_accuracy"], b["frechet_distance"]]
            for a, b in zip(cfg, cg)]
    reference = cfg[0]["frechet_real_vs_real"]
    data = {"dataset": size["data"], "n": size["n"], "sample_steps": size["sample_steps"], "train_steps": steps[0],
            "classifier_steps": steps[1], "real_vs_real": reference, "results": results, "tracks": tracks(results)}

    def plot(path):
        from .digits import sample_grid, show_grids

        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [1.4, 1, 1]})
        for name, points in results.items():
            xs, ys = [p["class_accuracy"] for p in points], [p["frechet_distance"] for p in points]
            axes[0].plot(xs, ys, "o-", label=name)
            for p in points:
                axes[0].annotate(f"s={p['scale']:g}", (p["class_accuracy"], p["frechet_distance"]),
                                 textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes[0].axhline(reference, color="gray", ls="--", lw=1, label="real vs real")
        axes[0].set(xlabel="class accuracy (evaluator)", ylabel="Frechet distance to the test split",
                    title=f"{size['data']}: guidance trades diversity for accuracy")
        axes[0].legend(fontsize=8)
        nrow = min(10, math.isqrt(size["n"]))
        s = max(size["scales"])
        show_grids(axes[1:], {f"{name}, s = {s:g}": sample_grid(x, nrow) for name, x in last.items()})
        save(fig, path)
    return Report("guidance-digits", f"guidance on {size['data']}: class accuracy and Frechet distance against the "
                                     f"scale s ({size['n']} samples a point, DDIM-{size['sample_steps']})",
                  ["scale s", "CFG class accuracy", "CFG Frechet", "classifier guidance class accuracy",
                   "classifier guidance Frechet"], rows, notes(results, size, steps, data["tracks"]), data, plot)


def tracks(results: dict[str, list[dict]], within: float = 0.1) -> bool:
    """Whether classifier guidance tracks CFG: its class accuracy within `within` of CFG's at
    every scale from 1 up (at s = 0 both are the same unconditional model)."""
    return all(abs(a["class_accuracy"] - b["class_accuracy"]) <= within
               for a, b in zip(results["classifier-free"], results["classifier"]) if a["scale"] >= 1)


def notes(results: dict[str, list[dict]], size: dict, steps: tuple[int, int], tracked: bool) -> list[str]:
    """What the table says, in words that follow its numbers."""
    cfg, cg = results["classifier-free"], results["classifier"]
    reference = cfg[0]["frechet_real_vs_real"]
    model, judge = size.get("runs", (f"vpred-{size['data']} class_conditional=true", f"classifier-{size['data']}"))
    batch = f" (batch {size['batch']})" if "batch" in size else ""
    lines = [f"{model} trained {steps[0]} steps, {judge} {steps[1]} steps{batch}; {size['n']} samples a point "
             f"({size['n'] // 10} a class, seed 0), DDIM-{size['sample_steps']} trailing; real vs real Frechet "
             f"distance {reference:.3g}",
             f"at s = 0 both methods sample the same unconditional model: class accuracy {cfg[0]['class_accuracy']:.1%}"
             f" and {cg[0]['class_accuracy']:.1%}, Frechet {cfg[0]['frechet_distance']:.3g} and "
             f"{cg[0]['frechet_distance']:.3g}"]
    one = next((p for p in cfg if p["scale"] == 1.0), None)
    top = cfg[-1]
    if one is not None and top is not one:
        rises = top["class_accuracy"] > one["class_accuracy"]
        costs = top["frechet_distance"] > one["frechet_distance"]
        lines.append(f"classifier-free guidance from s = 1 to s = {top['scale']:g}: class accuracy "
                     f"{one['class_accuracy']:.1%} -> {top['class_accuracy']:.1%}, Frechet "
                     f"{one['frechet_distance']:.3g} -> {top['frechet_distance']:.3g}: "
                     + ("fidelity bought with diversity, the trade-off" if rises and costs else
                        "the trade-off does not show at this budget (" + ("accuracy does not rise" if not rises
                                                                         else "the Frechet distance does not rise")
                        + ")"))
    gaps = ", ".join(f"s = {a['scale']:g}: {b['class_accuracy']:.1%} against {a['class_accuracy']:.1%}"
                     for a, b in zip(cfg, cg) if a["scale"] >= 1)
    lines.append("classifier guidance " + ("tracks" if tracked else "does not track") + " classifier-free guidance "
                 f"at this budget (the test: class accuracy within 10 points of CFG's at every s >= 1): {gaps}")
    return lines
