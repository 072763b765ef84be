"""SDXL's refiner (Podell et al. 2023, sec. 2.5): a second model trained only on the low-noise
end of the process (SDXL: the 200 lowest of 1000 levels, `train_until=0.2`) takes over the
base's sampling there (`inference.refine`, `sampling.experts.ExpertSwitch`) and should add the
fine detail the base draws poorly.

Measured: a base (`vpred-mnist5k`, the main job's recipe) read at two checkpoints, `early` and
`early + r` steps, and a refiner (`refiner-mnist5k`) trained r steps on t < 0.2 -- so the later
base is the base given the refiner's training steps instead.  Each base alone and handed over
to the refiner at 0.2, DDIM, seed 0, scored by the Frechet distance in the evaluator's features;
beside it how much the hand-over changes the samples (the mean absolute pixel change).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .common import draw, frechet, picture, trained

BASE, REFINER, DATASET = "vpred-mnist5k", "refiner-mnist5k", "mnist5k"
# budget -> the base's early steps, the refiner's steps (the later base: early + these), samples, DDIM steps
SIZES = {"tiny": (2, 2, 8, 5), "small": (400, 300, 200, 25), "full": (600, 400, 300, 25)}


def _sample_pair(base, refiner, n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The base's samples alone and handed over to the refiner at its train_until, the same noise."""
    from ...inference.refine import refine

    alone = draw(base, n, steps)
    refined = refine(base, refiner, n, sampler="ddim", steps=steps, seed=0, progress=False)[0].x.cpu().clamp(-1, 1)
    return alone, refined


def _verdict(found: dict, early: int, later: int) -> str:
    changes = [found[f"base at {s} + refiner"]["frechet"] - found[f"base at {s}"]["frechet"] for s in (early, later)]
    longer = found[f"base at {later}"]["frechet"] - found[f"base at {early}"]["frechet"]
    words = (f"the refiner changes the Frechet distance by {changes[0]:+.3g} (base at {early}) and {changes[1]:+.3g} "
             f"(base at {later}); the same steps spent on the base change it by {longer:+.3g} -- ")
    scale = found[f"base at {early}"]["frechet"]
    helps = all(c < -0.02 * scale for c in changes)       # lower by more than 2% at both bases
    if helps and min(-c for c in changes) > -longer:
        return words + "the refiner helps, more than training the base longer"
    if helps:
        return words + "the refiner helps, but training the base longer helps more"
    return words + "the refiner does not help at this budget (changes under 2% count as none)"


def refiner_note(budget: str) -> Report:
    from ...training import load

    early, ref_steps, n, sample_steps = SIZES[budget]
    later = early + ref_steps
    found, shown, samples = {}, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        base_later = trained(base_dir, BASE, later, budget, ckpt_every=early)
        refiner = trained(Path(tmp) / "refiner", REFINER, ref_steps, budget)
        base_early = load(base_dir / "checkpoints" / f"step_{early:08d}")
        for steps, base in ((early, base_early), (later, base_later)):
            alone, refined = _sample_pair(base, refiner, n, sample_steps)
            found[f"base at {steps}"] = {"base_steps": steps, "refiner_steps": 0}
            found[f"base at {steps} + refiner"] = {"base_steps": steps, "refiner_steps": ref_steps,
                                                   "change": (refined - alone).abs().mean().item()}
            samples.update({f"base at {steps}": alone, f"base at {steps} + refiner": refined})
            shown += [alone[:10], refined[:10]]   # 10 a row (n >= 10), or n
    scores = frechet(DATASET, samples)
    for name in found:
        found[name]["frechet"] = scores[name]
    real = scores["real_vs_real"]
    rows = [[name, f"{r['base_steps']} + {ref_steps}" if r["refiner_steps"] else r["base_steps"], r["frechet"],
             r.get("change", "-")] for name, r in found.items()]
    rows.append(["real vs real", "-", real, "-"])
    notes = [f"{BASE} trained {later} steps, read at {early} and {later}; {REFINER} trained {ref_steps} steps on the "
             f"200 lowest of 1000 levels (train_until={refiner.config.train_until}); hand-over at "
             f"{refiner.config.train_until}; {n} samples a row, DDIM {sample_steps} steps, seed 0",
             _verdict(found, early, later),
             f"the figure: per base, {min(10, n)} samples alone and the same {min(10, n)} refined (the same noise)"]
    data = {"budget": budget, "early": early, "later": later, "refiner_steps": ref_steps, "n": n,
            "sample_steps": sample_steps, "switch": refiner.config.train_until, "rows": found, "real_vs_real": real}
    names = list(found)

    def plot(path):
        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
        ax.bar(range(len(names)), [found[k]["frechet"] for k in names], color=["C0", "C1"] * 2)
        ax.axhline(real, color="grey", ls="--", label="real vs real")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="Frechet distance (lower is better)", title="base alone, and + refiner")
        ax.legend(fontsize=8)
        grid = picture(torch.cat(shown), len(shown[0]))
        pic.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        pic.set_yticks([(i + 0.5) * (shown[0].shape[-2] + 1) for i in range(len(names))], names, fontsize=8)
        pic.set_xticks([])
        save(fig, path)
    return Report("sdxl-refiner", f"SDXL's refiner: base alone, base + refiner, and the base trained longer "
                                  f"(n = {n})", ["sampler", "training steps", "Frechet distance",
                                                 "mean |change| by the refiner"], rows, notes, data, plot)
