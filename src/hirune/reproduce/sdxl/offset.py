"""Noise offset (Guttenberg 2023, "Diffusion with offset noise"; used for SDXL's fine-tunes):
training noise eps + offset x eps_c, one eps_c ~ N(0, 1) per image and channel.  Independent
pixel noise has a per-image mean of std 1 / sqrt(HW) (1 / 28 here), so a model trained on it
barely learns to move an image's mean brightness away from its start noise's; the offset gives
the noise a low frequency to learn, and the samples' mean brightness should spread like the
data's.

Measured on `offset-noise-mnist5k` (digits at a random brightness, `mnist5k-brightness`;
Stable Diffusion's own recipe: eps prediction, the linear schedule) at noise_offset 0 and 0.1,
the same steps and seed: the std and the mean of the samples' per-image mean brightness against
the test split's, and the Frechet distance in the evaluator's features.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .common import draw, frechet, picture, trained

PRESET, DATASET, OFFSETS = "offset-noise-mnist5k", "mnist5k-brightness", (0.0, 0.1)
# budget -> training steps of each model, samples, DDIM steps
SIZES = {"tiny": (2, 8, 2), "small": (450, 200, 25), "full": (600, 300, 25)}


def brightness(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,): each image's mean brightness."""
    return images.mean(dim=(1, 2, 3))


def _verdict(found: dict, data: dict) -> str:
    plain, offset = (found[o]["std"] for o in OFFSETS)
    gap = {o: abs(found[o]["std"] - data["std"]) for o in OFFSETS}
    closer = gap[OFFSETS[1]] < gap[OFFSETS[0]]
    words = (f"the spread of the samples' brightness: {plain:.3f} without the offset, {offset:.3f} with it, "
             f"the test digits' {data['std']:.3f} -- ")
    if not closer:
        return words + "the offset does not bring it closer to the data's at this budget: the claim does not show"
    if plain < data["std"] < offset or plain < offset <= data["std"]:
        return words + "the offset widens a too-narrow spread toward the data's, as the argument predicts"
    return words + ("the offset brings it closer to the data's, but not as the argument says (without the offset "
                    "the spread is too wide, not too narrow)")


def offset_note(budget: str) -> Report:
    from ...data import load_dataset

    steps, n, sample_steps = SIZES[budget]
    test = brightness(load_dataset(DATASET, "test").images)
    data = {"std": float(test.std()), "mean": float(test.mean())}
    found, samples = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, offset in enumerate(OFFSETS):
            run = trained(Path(tmp) / f"offset{i}", PRESET, steps, budget, noise_offset=offset)
            x = samples[offset] = draw(run, n, sample_steps)
            means = brightness(x)
            found[offset] = {"std": float(means.std()), "mean": float(means.mean()),
                             "noise_offset": run.config.noise_offset}
    scores = frechet(DATASET, {f"{o:g}": samples[o] for o in OFFSETS})
    for o in OFFSETS:
        found[o]["frechet"] = scores[f"{o:g}"]
    real = scores["real_vs_real"]
    rows = [[f"noise offset {o:g}", found[o]["std"], found[o]["mean"], found[o]["frechet"]] for o in OFFSETS]
    rows.append(["test digits", data["std"], data["mean"], real])
    notes = [f"{PRESET} at noise_offset {' and '.join(f'{o:g}' for o in OFFSETS)}, {steps} steps each; {n} samples, "
             f"DDIM {sample_steps} steps, seed 0 (the same start noise for both); brightness: an image's mean in "
             "[-1, 1]; the last row: the test split (its Frechet column: real vs real)",
             _verdict(found, data),
             f"Frechet distance {found[OFFSETS[0]]['frechet']:.3g} without the offset, "
             f"{found[OFFSETS[1]]['frechet']:.3g} with it",
             "the figure: the histograms of the samples' brightness against the test digits'; 20 samples of each "
             "model (top: no offset), the same noise in each column"]
    report_data = {"budget": budget, "steps": steps, "n": n, "sample_steps": sample_steps, "data": data,
                   "runs": {f"{o:g}": found[o] for o in OFFSETS}, "real_vs_real": real}

    def plot(path):
        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.5]})
        bins = torch.linspace(-1, 1, 31).tolist()
        ax.hist(test.tolist(), bins=bins, density=True, color="grey", alpha=0.5, label="test digits")
        for o in OFFSETS:
            ax.hist(brightness(samples[o]).tolist(), bins=bins, density=True, histtype="step", lw=2,
                    label=f"samples, offset {o:g}")
        ax.set(xlabel="mean brightness of an image", ylabel="density", title="the spread of brightness")
        ax.legend(fontsize=8)
        k = min(20, n)
        grid = picture(torch.cat([samples[o][:k] for o in OFFSETS]), k)
        pic.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        pic.axis("off")
        save(fig, path)
    return Report("sdxl-offset", f"noise offset: the spread of the samples' brightness ({steps} steps, n = {n})",
                  ["model", "std of image means", "mean of image means", "Frechet distance"], rows, notes,
                  report_data, plot)
