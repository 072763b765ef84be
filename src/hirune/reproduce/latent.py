"""Latent diffusion (Rombach et al. 2022, sec. 4.1 and fig. 6): a diffusion model on the latents of
a frozen KL autoencoder (f = 4: 4 x 7 x 7 latents of MNIST's 28 x 28) runs many more steps in the
same compute than the same recipe on pixels, and reaches better samples at the same budget.

Measured on MNIST 5k (the tiny budget: the 8 x 8 digits and f = 2, where only the pipeline is
checked): the autoencoder is trained first (`kl-ae-mnist5k`, outside the budget, its time
reported); then the main job's recipe on pixels (`vpred-mnist5k`, a UNet of 1.6 M parameters)
and on the latents (`ldm-mnist5k`, 1.7 M) is each given the same wall-clock budget on one torch
thread (`steps_in`: the steps that fit it, from a short calibration run), then sampled with
DDIM (trailing) and scored by the shipped evaluator's Frechet distance.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..playbook.report import Report, pyplot, save
from .digits import sample_grid, show_grids
from .sampling import one_thread

# the tiny budget: the 8 x 8 digits, a UNet of 8 channels, an f = 2 autoencoder of 2 steps and a
# fixed 4 training steps each (no calibration: every `train` call costs seconds of bookkeeping);
# otherwise seconds of training per network (`steps_in`); samples scored, DDIM steps
_TINY_UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}
_TINY = {"model_config": _TINY_UNET, "batch_size": 8, "dataset": "digits"}
_TINY_AE = {"steps": 2, "batch_size": 8, "dataset": "digits",
            "model_config": {"size": "f2", "z_channels": 4, "kl_weight": 1e-3}}
SIZES = {"tiny": dict(seconds=None, steps=4, autoencoder=_TINY_AE, pixels=_TINY, latents=_TINY, n=32,
                      sample_steps=6, dataset="digits"),
         "small": dict(seconds=120.0, autoencoder={}, pixels={}, latents={}, n=300, sample_steps=50,
                       dataset="mnist5k", trial=8, skip=2),
         "full": dict(seconds=300.0, autoencoder={}, pixels={}, latents={}, n=1000, sample_steps=50,
                      dataset="mnist5k", trial=12, skip=3)}
_RUN = {"sample_every": 0, "eval_samples": 0}


def steps_in(seconds: float, preset: str | None, overrides: dict, folder: Path, trial: int = 8,
             skip: int = 2) -> int:
    """The training steps of `preset` with `overrides` that fit `seconds` on this machine: a
    throwaway run of `trial` steps in `folder`, its median images per second after the first
    `skip` logged steps (warm-up), the batch divided by it."""
    from ..training import preset_config, train

    if trial <= skip:
        raise ValueError(f"trial={trial} leaves no step after skip={skip}; valid: trial > skip")
    cfg = preset_config(preset, {**overrides, **_RUN, "out": str(folder), "ckpt_every": 0, "log_every": 1,
                                 "steps": trial})
    train(cfg, progress=False)
    rates = [json.loads(line)["images_per_s"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(folder)
    return max(1, int(seconds / (cfg.batch_size / statistics.median(rates[skip:]))))


def _train(folder: Path, preset: str, overrides: dict, steps: int):
    from ..training import load, preset_config, train

    t0 = time.perf_counter()
    train(preset_config(preset, {**overrides, **_RUN, "out": str(folder), "steps": steps, "ckpt_every": steps,
                                 "log_every": steps, "warmup": min(100, steps // 5)}), progress=False)
    return load(folder), time.perf_counter() - t0


def latent_diffusion_note(budget: str) -> Report:
    """Pixels against latents: the autoencoder first (its time reported), then each network the
    same seconds of training (tiny: the same fixed steps), sampled, decoded and scored."""
    from ..metrics.evaluator import evaluate_images
    from ..sampling import sample

    size = SIZES[budget]
    n, steps, dataset = size["n"], size["sample_steps"], size["dataset"]
    rows, found, grids = [], {}, {}
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        ae_preset = f"kl-ae-{dataset}"
        from ..training import preset_config, train

        train(preset_config(ae_preset, {**size["autoencoder"], **_RUN, "out": str(root / "ae")}), progress=False)
        ae_s = time.perf_counter() - t0
        contestants = (("pixels", f"vpred-{dataset}", size["pixels"]),
                       ("latents", "ldm-mnist5k", {**size["latents"], "autoencoder": str(root / "ae")}))
        for name, preset, overrides in contestants:
            train_steps = size["steps"] if size["seconds"] is None else \
                steps_in(size["seconds"], preset, overrides, root / f"{name}-trial", size["trial"], size["skip"])
            run, seconds = _train(root / name, preset, overrides, train_steps)
            with torch.no_grad():
                x = run.decode(sample(run.denoiser, (n, *run.sample_shape), "ddim", steps, "trailing").x)
            s = evaluate_images(dataset, x.float().clamp(-1, 1))
            params = sum(p.numel() for p in run.model.parameters())
            found[name] = {"preset": preset, "params": params, "train_steps": train_steps, "train_s": seconds,
                           "frechet": s["frechet_distance"], "class_entropy": s["class_entropy_bits"]}
            reference = s["frechet_real_vs_real"]
            rows.append([name, preset, params, train_steps, seconds, s["frechet_distance"], s["class_entropy_bits"]])
            grids[name] = sample_grid(x.clamp(-1, 1))
    pixels, latents = found["pixels"], found["latents"]
    budget_words = (f"{size['steps']} steps (tiny: no calibration)" if size["seconds"] is None
                    else f"{size['seconds']:g} s of training (steps from a calibration run)")
    notes = [f"each network {budget_words} on one thread ("
             f"the time column: the run's own, checkpoint and loss curve included); the autoencoder {ae_preset} "
             f"trained first in {ae_s:.0f} s, outside the budget; DDIM {steps} steps (trailing), n = {n}; Frechet "
             f"distance in the evaluator's features (real training digits: {reference:.3g})",
             f"the latent network ran {latents['train_steps'] / pixels['train_steps']:.1f}x the pixel network's steps; "
             f"Frechet {latents['frechet']:.3g} against {pixels['frechet']:.3g} -- "
             + ("latent diffusion ahead at the same budget, as the paper says" if latents["frechet"] < pixels["frechet"]
                else "latent diffusion not ahead here: the claim does not hold at this budget")]
    data = {"runs": found, "autoencoder_s": ae_s, "seconds": size["seconds"], "real_vs_real": reference,
            "n": n, "sample_steps": steps, "dataset": dataset}

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.6, 1, 1]})
        axes[0].bar(range(2), [pixels["frechet"], latents["frechet"]], color=["C0", "C1"])
        axes[0].set_xticks(range(2), [f"pixels\n{pixels['train_steps']} steps",
                                      f"latents\n{latents['train_steps']} steps"])
        axes[0].axhline(reference, color="grey", ls="--", label="real vs real")
        axes[0].set(ylabel="Frechet distance (lower is better)", title=f"{budget_words.split(' (')[0]} each")
        axes[0].legend(fontsize=8)
        show_grids(axes[1:], grids)
        save(fig, path)
    return Report("latent-diffusion", f"pixels against latents at the same wall-clock budget ({dataset}, n = {n})",
                  ["space", "preset", "params", "steps", "train s", "Frechet", "class entropy (bits)"],
                  rows, notes, data, plot)
