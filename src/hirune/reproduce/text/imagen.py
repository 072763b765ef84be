"""Imagen's cascade (Saharia et al. 2022, sec. 2.4; Ho et al. 2022, CDM): a text-to-image base
model at low resolution, then a text-conditioned super-resolution model that reads the base's
sample upsampled as extra input channels.  Noise conditioning augmentation: in training the
low-resolution input is noised to a random level a (told to the network), and at sampling it is
noised to a fixed a, so the SR model learns to ignore the base's artefacts instead of copying
them.  The claims measured here: a cascade beats one full-resolution model of the same size and
compute, and an SR model trained with augmentation gets better as the sampling level rises
while one trained without it cannot use the noise.

Measured, on MNIST 5k: imagen-base-mnist5k (14 x 14, `mnist5k-14`), imagen-sr-mnist5k (14 -> 28,
a ~ U[0, 0.5] in training) and imagen-sr-noaug-mnist5k (the same, no augmentation), against
imagen-single-mnist5k (one 28 x 28 model of about base + SR's parameters) trained for the same
CPU budget as base + SR (the presets' seconds per 100 steps: base 21, SR 49, single 99).
Each contestant draws n images from captions naming the digits in turn, the base and single
models guided at CFG 3, the SR models unguided, DDIM; the same base samples feed every SR row,
noised to each sampling level with fixed noise (`inference.cascade`).  Scores: the shipped
mnist5k evaluator's Frechet distance to the test split and the share read as the digit named.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save

SECONDS_PER_100 = {"base": 21, "sr": 49, "single": 99}   # the presets' training cost (training/presets.py)
_NET = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 16}
_TINY = {"batch_size": 8, "log_every": 1000}   # nothing logged: no loss curve drawn
# budget -> (base steps, SR steps, overrides of each preset: base, sr, single), text encoder (None: the
#           presets', MiniLM), sampling levels, samples a row, DDIM steps
SIZES = {
    "tiny": ((2, 2, {"base": {**_TINY, "model_config": {**_NET, "attention_resolutions": [1]}},
                     "sr": {**_TINY, "model_config": _NET},
                     "single": {**_TINY, "model_config": {**_NET, "channels": 24, "head_channels": 24}}}),
             "tiny", (0.0, 0.3), 10, 2),
    "small": ((300, 250, {}), None, (0.0, 0.1, 0.3), 100, 25),
    "full": ((1000, 1000, {}), None, (0.0, 0.1, 0.3), 300, 25),
}
BASE_SCALE, SR_SCALE = 3.0, 1.0


def single_steps(base_steps: int, sr_steps: int) -> int:
    """The single 28 x 28 model's steps for base + SR's CPU budget (the presets' measured costs)."""
    cost = base_steps * SECONDS_PER_100["base"] + sr_steps * SECONDS_PER_100["sr"]
    return max(1, round(cost / SECONDS_PER_100["single"]))


def _params(run) -> int:
    return sum(p.numel() for p in run.model.parameters())


def _denoiser(run, scale: float):
    return run.denoiser if scale == 1.0 else run.guide("cfg", scale)


def train_contestants(folder: Path, base_steps: int, sr_steps: int, settings: dict, encoder: str | None):
    """{name: (loaded run, training steps, seconds)} of base, sr, sr-noaug and single."""
    from ...training import load
    from ..systems.bases import train_base

    steps = {"base": base_steps, "sr": sr_steps, "sr-noaug": sr_steps, "single": single_steps(base_steps, sr_steps)}
    runs = {}
    for name, n in steps.items():
        overrides = {**settings.get(name.split("-")[0], {}), **({"text_encoder": encoder} if encoder else {})}
        start = time.perf_counter()
        run = load(train_base(f"imagen-{name}-mnist5k", folder / name, n, **overrides))
        runs[name] = (run, n, time.perf_counter() - start)
    return runs


def digit_scorer(labels: torch.Tensor, dataset: str = "mnist5k"):
    """score(images) -> (Frechet distance to the test split, share read as `labels`): the shipped
    evaluator's `evaluate_images` with the test split's features computed once for every
    contestant (`metrics.evaluator.reference_of`); and the real-vs-real reference (n train
    images against the test split)."""
    from ...metrics.evaluator import frechet_distance, reference_of

    reference = reference_of(dataset)

    def score(images: torch.Tensor) -> tuple[float, float]:
        f, logits = reference.features(images.clamp(-1, 1))
        return frechet_distance(f, reference.test), float((logits.argmax(1) == labels).double().mean())
    return score, reference.real_vs_real(len(labels))


def contest(runs: dict, levels, n: int, steps: int, seed: int = 0) -> tuple[list[dict], list]:
    """The scored rows (cascade at each level with each SR run, single, base upsampled) and the
    first 20 images of each."""
    from ...data.captions import caption
    from ...families import superres
    from ...inference.cascade import check_cascade

    base, single = runs["base"][0], runs["single"][0]
    labels = torch.arange(n) % 10
    prompts = [caption(int(y)) for y in labels]
    kw = dict(sampler="ddim", steps=steps, seed=seed, progress=False, prompts=prompts)
    low = base.generate(n, denoiser=_denoiser(base, BASE_SCALE), **kw)[0].x.clamp(-1, 1)
    scorer, real_vs_real = digit_scorer(labels)
    rows, pictures = [], []

    def score(contestant: str, images, params: int, aug="-", level="-") -> None:
        fd, accuracy = scorer(images.cpu())
        rows.append({"contestant": contestant, "params": params, "noise_aug": aug, "level": level,
                     "frechet_distance": fd, "accuracy": accuracy, "frechet_real_vs_real": real_vs_real})
        pictures.append(images[:20].clamp(-1, 1).cpu())

    for name, label in (("sr", "base + SR"), ("sr-noaug", "base + SR, no augmentation")):
        sr = runs[name][0]
        check_cascade(base, sr)
        for level in levels:
            high = sr.generate(n, denoiser=_denoiser(sr, SR_SCALE), low_res=low, aug_level=level, **kw)[0].x
            score(label, high, _params(base) + _params(sr), sr.config.noise_aug, level)
    score("one 28 x 28 model", single.generate(n, denoiser=_denoiser(single, BASE_SCALE), **kw)[0].x, _params(single))
    score("base, nearest-upsampled (no SR)", superres.upsample(low, 28), _params(base))
    return rows, pictures


def findings(rows: list[dict], levels) -> list[str]:
    """The two claims in words, as measured."""
    aug = {r["level"]: r for r in rows if r["contestant"] == "base + SR"}
    noaug = {r["level"]: r for r in rows if r["contestant"] == "base + SR, no augmentation"}
    single = next(r for r in rows if r["contestant"] == "one 28 x 28 model")
    lo, hi = min(levels), max(levels)
    fd = {k: v["frechet_distance"] for k, v in aug.items()}
    best = min(aug.values(), key=lambda r: r["frechet_distance"])
    lines = [f"augmentation: the SR model trained with it goes {fd[lo]:.3g} -> {fd[hi]:.3g} from sampling level "
             f"{lo:g} to {hi:g}, the one without it {noaug[lo]['frechet_distance']:.3g} -> "
             f"{noaug[hi]['frechet_distance']:.3g} -- "
             + ("as Imagen reports, the noise helps only the model trained with it"
                if fd[hi] < fd[lo] and noaug[hi]["frechet_distance"] >= noaug[lo]["frechet_distance"] else
                "Imagen's finding (the noise helps the model trained with it) does not show at this budget")]
    wins = best["frechet_distance"] < single["frechet_distance"]
    lines.append(f"cascade against one model: base + SR at level {best['level']:g} {best['frechet_distance']:.3g} "
                 f"(digit named {best['accuracy']:.0%}) against the single 28 x 28 model "
                 f"{single['frechet_distance']:.3g} ({single['accuracy']:.0%}) -- "
                 + ("the cascade is better at the same size and CPU budget" if wins else
                    "the cascade does not beat the single model at this budget"))
    return lines


def imagen_note(budget: str) -> Report:
    (base_steps, sr_steps, settings), encoder, levels, n, steps = SIZES[budget]
    encoder = encoder or _preset_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_contestants(Path(tmp), base_steps, sr_steps, settings, encoder)
        rows, pictures = contest(runs, levels, n, steps)
    trained = {name: {"steps": s, "seconds": sec, "parameters": _params(run)} for name, (run, s, sec) in runs.items()}
    table = [[r["contestant"], r["params"], r["noise_aug"], r["level"], r["frechet_distance"], r["accuracy"]]
             for r in rows]
    notes = ["trained here (steps, seconds): " + ", ".join(f"{k} {v['steps']} ({v['seconds']:.0f} s)"
                                                           for k, v in trained.items())
             + f"; the single model's steps set for base + SR's CPU budget by the presets' costs per 100 steps "
               f"({SECONDS_PER_100}); text encoder {encoder or 'the presets (MiniLM)'}",
             f"{n} samples a row, captions naming the digits in turn, CFG {BASE_SCALE:g} for base and single, SR "
             f"{SR_SCALE:g}, DDIM {steps} steps; real vs real Frechet distance {rows[0]['frechet_real_vs_real']:.3g}",
             *findings(rows, levels),
             "the figure: one row a contestant, in the table's order (20 images: the digits 0..9 twice)"]
    data = {"budget": budget, "levels": list(levels), "n": n, "steps": steps, "text_encoder": encoder,
            "trained": trained, "rows": rows}

    def plot(path):
        from ...viz import grid_picture

        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
        for label, marker in (("base + SR", "o"), ("base + SR, no augmentation", "s")):
            mine = [r for r in rows if r["contestant"] == label]
            ax.plot([r["level"] for r in mine], [r["frechet_distance"] for r in mine], marker=marker, label=label)
        for r, ls in zip(rows[-2:], ("--", ":")):
            ax.axhline(r["frechet_distance"], color="grey", ls=ls, label=r["contestant"])
        ax.set(xlabel="noise level a of the low-res input at sampling", ylabel="Frechet distance (lower is better)")
        ax.legend(fontsize=7)
        pic.imshow(grid_picture(torch.cat(pictures), 20), cmap="gray")
        pic.axis("off")
        save(fig, path)
    return Report("imagen", "Imagen's cascade (14 x 14 base + 14 -> 28 SR) against one 28 x 28 model (MNIST 5k)",
                  ["contestant", "parameters", "augmentation in training", "level at sampling", "Frechet distance",
                   "digit named"], table, notes, data, plot)


def _preset_encoder() -> str | None:
    """None (the presets' MiniLM) where its weights are installed, else the tiny text encoder."""
    from .text_to_image import minilm_missing

    return "tiny" if minilm_missing() else None
