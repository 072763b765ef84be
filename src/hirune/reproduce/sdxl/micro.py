"""SDXL's micro-conditioning (Podell et al. 2023, sec. 2.2): the network told each training
image's original size and the top-left corner of its random crop learns what they do to the
image, so at sampling "full size, uncropped" asks for sharp, whole objects -- where a network
trained on the same augmented data, untold, learns the blur and the cuts as part of the data.

Measured on `sdxl-micro-mnist5k` (each digit shrunk to an original height of 7..28 and
upscaled, and cut at offsets of up to 4 pixels: `families.micro`) beside the same recipe with
`micro_conditioning=false` (SDXL's ablation), the same steps and seed:

* sharpness: the mean squared Laplacian (`micro.high_frequency_energy`) of samples asked for
  original heights 7, 14 and 28, beside the test digits degraded to those heights; the
  untold model's samples at full size
* crop: the ink's centre of mass (`micro.center_of_mass`) of samples asked for crops (-c, -c),
  (0, 0), (c, c): its move from (0, 0) against the asked (+c, -c) pixels (content cut at
  offset d lands at -d); the spread of the centre of mass (std, pixels) of told, untold and
  test digits
* the Frechet distance at full size, uncropped, of both models (the evaluator's features)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .common import draw, frechet, picture, trained

PRESET, DATASET = "sdxl-micro-mnist5k", "mnist5k"
# budget -> training steps of each model, samples a cell, DDIM steps
SIZES = {"tiny": (2, 8, 2), "small": (500, 200, 25), "full": (800, 300, 25)}


def _heights(run) -> tuple[int, int, int]:
    """The original heights asked: the smallest the run saw, half the full size, the full size."""
    low, full = run.config.micro_min_size, run.sample_shape[1]
    return low, max(low, full // 2), full


def _sharpness(told, plain: dict, n: int, steps: int, test: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
    """The high-frequency energy of samples asked for each original height (plain: each model's
    samples at full size, uncropped) and of the test digits degraded to it."""
    from ...families import micro

    out, shown = {"told": {}, "data": {}}, []
    full = told.sample_shape[1]
    for h in _heights(told):
        x = plain["told"] if h == full else draw(told, n, steps, original_size=h)
        out["told"][h] = float(micro.high_frequency_energy(x).mean())
        out["data"][h] = float(micro.high_frequency_energy(micro.degrade(test, torch.full((len(test),), h))).mean())
        shown.append(x)
    out["untold"] = float(micro.high_frequency_energy(plain["untold"]).mean())
    return out, shown


def _crops(told, plain: dict, n: int, steps: int, test: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
    """The ink's centre of mass of samples asked for crops (-c, -c), (0, 0), (c, c): its move
    against the move asked, and its spread (told, untold, test digits)."""
    from ...families import micro

    c = told.config.micro_crop
    centres, shown = {}, []
    for d in (-c, 0, c):
        x = plain["told"] if d == 0 else draw(told, n, steps, crop=(d, d))
        centres[d] = micro.center_of_mass(x)
        shown.append(x)
    moved = {d: (centres[d].mean(0) - centres[0].mean(0)).tolist() for d in (-c, c)}
    asked = {d: [-d, -d] for d in (-c, c)}
    followed = sum(m / a for d in (-c, c) for m, a in zip(moved[d], asked[d])) / 4   # 1: the move asked, 0: none
    spread = {"told": centres[0].std(0).mean().item(),
              "untold": micro.center_of_mass(plain["untold"]).std(0).mean().item(),
              "data": micro.center_of_mass(test).std(0).mean().item()}
    return {"margin": c, "centre": {d: v.mean(0).tolist() for d, v in centres.items()}, "moved": moved,
            "asked": asked, "followed": followed, "spread": spread}, shown


def _verdicts(sharp: dict, crop: dict, fd: dict) -> list[str]:
    hs = sorted(sharp["told"])
    rising = all(sharp["told"][a] < sharp["told"][b] for a, b in zip(hs, hs[1:]))
    sharper = sharp["told"][hs[-1]] > sharp["untold"]
    size = ("the sharpness of the samples follows the height asked, as the data's does" if rising else
            "the sharpness of the samples does not rise with the height asked") + (
        ", and the untold model's full-size samples are blurrier than the told model's (it learned the blur as part "
        "of the data)" if sharper else ", and the untold model's samples are not blurrier than the told model's")
    size += " -- the size conditioning " + ("works, as SDXL says" if rising and sharper else
                                           "does not show at this budget")
    followed = crop["followed"]
    crops = (f"asked to move the digit by {crop['margin']} pixels each way, the samples move {followed:.0%} of it "
             "(mean over both crops and axes) -- " + ("the crop conditioning works" if followed >= 0.5 else
                                                      "the crop conditioning does not show at this budget")
             + f"; the spread of the centre of mass: told {crop['spread']['told']:.2f}, untold "
               f"{crop['spread']['untold']:.2f}, test digits {crop['spread']['data']:.2f} pixels")
    quality = (f"Frechet distance at full size, uncropped: told {fd['told']:.3g}, untold {fd['untold']:.3g} "
               f"(real vs real {fd['real_vs_real']:.3g}): " + ("telling helps" if fd["told"] < fd["untold"]
                                                             else "telling does not lower it at this budget"))
    return [size, crops, quality]


def micro_note(budget: str) -> Report:
    from ...data import load_dataset

    steps, n, sample_steps = SIZES[budget]
    test = load_dataset(DATASET, "test").images
    with tempfile.TemporaryDirectory() as tmp:
        told = trained(Path(tmp) / "told", PRESET, steps, budget)
        untold = trained(Path(tmp) / "untold", PRESET, steps, budget, micro_conditioning=False)
        plain = {"told": draw(told, n, sample_steps), "untold": draw(untold, n, sample_steps)}
        sharp, by_height = _sharpness(told, plain, n, sample_steps, test)
        crop, by_crop = _crops(told, plain, n, sample_steps, test)
    fd = frechet(DATASET, plain)
    full = max(sharp["told"])
    rows = [["sharpness", f"original height {h}", sharp["told"][h], sharp["untold"] if h == full else "-",
             sharp["data"][h]] for h in sorted(sharp["told"])]
    rows += [["crop: centre of mass moved (row, col)", f"crop ({d}, {d}): move ({-d:+d}, {-d:+d})",
              "({:+.2f}, {:+.2f})".format(*crop["moved"][d]), "-", "({:+d}, {:+d})".format(*crop["asked"][d])]
             for d in sorted(crop["moved"])]
    rows.append(["crop: spread of the centre of mass (std, px)", "crop (0, 0)", crop["spread"]["told"],
                 crop["spread"]["untold"], crop["spread"]["data"]])
    rows.append(["Frechet distance", "full size, uncropped", fd["told"], fd["untold"], fd["real_vs_real"]])
    notes = [f"{PRESET} (told) and the same with micro_conditioning=false (untold), {steps} steps each; {n} samples "
             f"a cell, DDIM {sample_steps} steps, seed 0 (the same noise in every cell); sharpness: the mean squared "
             "Laplacian; the last column: the test digits (degraded to the height; the move asked; real vs real)",
             *_verdicts(sharp, crop, fd),
             "the figure: samples asked for each height, then each crop, the same noise in every column"]
    changed = (by_height[0] - by_height[-1]).abs().mean().item()
    data = {"budget": budget, "steps": steps, "n": n, "sample_steps": sample_steps, "sharpness": sharp,
            "crop": crop, "frechet": fd, "height_changes_samples": changed}
    heights = sorted(sharp["told"])
    labels = [f"height {h}" for h in heights] + [f"crop ({d}, {d})" for d in sorted(crop["centre"])]
    k = min(10, n)                     # samples a row of the figure
    grid = torch.cat([x[:k] for x in by_height + by_crop])

    def plot(path):
        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
        ax.plot(heights, [sharp["told"][h] for h in heights], marker="o", label="samples, told the height")
        ax.plot(heights, [sharp["data"][h] for h in heights], marker="s", ls="--", label="test digits at the height")
        ax.scatter([heights[-1]], [sharp["untold"]], color="C3", zorder=3, label="samples, untold (full size)")
        ax.set(xlabel="original height asked (pixels)", ylabel="mean squared Laplacian (sharpness)",
               title="size conditioning")
        ax.legend(fontsize=8)
        pic.imshow(picture(grid, k).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        pic.set_yticks([(i + 0.5) * (grid.shape[-2] + 1) for i in range(len(labels))], labels, fontsize=8)
        pic.set_xticks([])
        pic.set_title("rows: heights, then crops (the same noise in each column)", fontsize=9)
        save(fig, path)
    return Report("sdxl-micro", f"SDXL's micro-conditioning on size and crop: told against untold ({steps} steps, "
                                f"n = {n})", ["measure", "asked", "told", "untold", "test digits"], rows, notes, data,
                  plot)
