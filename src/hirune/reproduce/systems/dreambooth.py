"""DreamBooth (Ruiz et al. 2023, secs. 3.1-3.3 and table 3): a text-to-image model fine-tuned on a
few images of one subject bound to a rare identifier ("a sks seven": the crossbar sevens of
`data.subjects`).  The claims: the model learns the subject (fidelity), and without the
class-specific prior-preservation loss (lambda = 0) it forgets the class -- plain "a seven"
takes the subject's mark (language drift) and the subject's samples lose their variety --
which lambda = 1 (the frozen base's own "a seven" images as a second half of each batch)
prevents.

Measured: a trained text run (the base) tuned at lambda = 0 and 1 with `hirune train
dreambooth`'s defaults (every weight, lr 1e-4; at the full budget LoRA rows too, lr 1e-3), then
each draws n samples a prompt (DDIM, seed 0).  Columns: fidelity, the share of "a sks seven"
samples with the crossbar (`evaluation.subject.has_crossbar`); drift, that share among "a seven"
samples; the share of "a sks seven" read as a seven by the shipped evaluator; diversity, the
mean pairwise distance of the "a sks seven" samples in the evaluator's features (the base's
"a seven" and the four instances beside it); and the text accuracy of the nine other digits
(catastrophic forgetting).  The first row is the base before tuning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report
from .bases import train_base

INSTANCE, CLASS = "a sks seven", "a seven"
_TINY_UNET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
              "head_channels": 8}
# budget -> (base steps, base overrides), tuning steps, samples a prompt, DDIM steps, class images, LoRA rows
SIZES = {
    "tiny": ((2, {"batch_size": 8, "model_config": _TINY_UNET}), 2, 9, 2, 4, False),
    "small": ((300, {"batch_size": 32, "model_config": _TINY_UNET}), 100, 90, 10, 40, False),
    "full": ((1000, {}), 400, 200, 25, 100, True),
}


def diversity(net, images: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance of the images' evaluator features."""
    from ...metrics.evaluator import features_and_logits

    f = features_and_logits(net, images)[0]
    return float(torch.cdist(f, f).sum() / (len(f) * (len(f) - 1)))


def draw(run, prompts: list[str], steps: int) -> torch.Tensor:
    out, _ = run.generate(len(prompts), "ddim", steps, seed=0, prompts=prompts, progress=False)
    return out.x.cpu().clamp(-1, 1)


def score(run, net, n: int, steps: int) -> tuple[dict, torch.Tensor]:
    """The row's measures from n samples of each prompt kind; and 8 "a sks seven" | 8 "a seven" samples."""
    from ...data.captions import caption
    from ...evaluation.subject import has_crossbar
    from ...metrics.evaluator import features_and_logits

    sks, seven = draw(run, [INSTANCE] * n, steps), draw(run, [CLASS] * n, steps)
    digits = torch.tensor([d for d in range(10) if d != 7]).repeat(n // 9 + 1)[:n]
    others = draw(run, [caption(int(d)) for d in digits], steps)
    logits = features_and_logits(net, torch.cat([sks, others]))[1]
    row = {"fidelity": has_crossbar(sks).float().mean().item(), "drift": has_crossbar(seven).float().mean().item(),
           "sks_read_as_seven": (logits[:n].argmax(1) == 7).float().mean().item(),
           "diversity": diversity(net, sks), "seven_diversity": diversity(net, seven),
           "other_digits_accuracy": (logits[n:].argmax(1) == digits).float().mean().item()}
    return row, torch.cat([sks[:8], seven[:8]])


def _verdict(base: dict, zero: dict, one: dict) -> str:
    """The drift result in words; none where the base does not yet draw the digits named."""
    if base["other_digits_accuracy"] < 0.5:
        return (f"the base draws the digit named in {base['other_digits_accuracy']:.0%} of samples: too short a base "
                "for the claim at this budget")
    return ("prior preservation keeps the class" if one["drift"] < zero["drift"] else
            "prior preservation shows no less drift at this budget")


def dreambooth_note(budget: str) -> Report:
    from safetensors.torch import load_file

    from ...data.subjects import crossbar_sevens
    from ...families.dreambooth import CLASS_IMAGES
    from ...metrics.evaluator import load_evaluator
    from ...training import load
    from ...training.loop import train
    from ...training.presets import finetune_config
    from ...viz import image_grid

    (base_steps, overrides), steps, n, sample_steps, class_images, with_lora = SIZES[budget]
    tunings = {"full, lambda=0": {"prior_weight": 0.0}, "full, lambda=1": {"prior_weight": 1.0}}
    if with_lora:
        tunings.update({"LoRA, lambda=0": {"prior_weight": 0.0, "adapter": "lora", "lr": 1e-3},
                        "LoRA, lambda=1": {"prior_weight": 1.0, "adapter": "lora", "lr": 1e-3}})
    net = load_evaluator("mnist5k")
    results, grids, drawn = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = train_base("text-mnist5k", Path(tmp) / "base", base_steps, **overrides)
        results["base (before tuning)"], grid = score(load(base), net, n, sample_steps)
        grids.append(grid)
        for i, (name, settings) in enumerate(tunings.items()):
            out = Path(tmp) / f"tuned{i}"
            train(finetune_config("dreambooth", str(base), {"steps": steps, "ckpt_every": steps, "out": str(out),
                                                             "class_images": class_images,
                                                             "sample_steps": sample_steps, **settings}),
                  progress=False)
            if settings["prior_weight"]:   # lambda = 0 draws no class images: every row is an instance
                drawn.append(load_file(str(out / CLASS_IMAGES))["images"])
            row, grid = score(load(out), net, n, sample_steps)
            results[name] = {**settings, **row}
            grids.append(grid)
    instances = crossbar_sevens()
    own = diversity(net, instances)
    same = all(torch.equal(d, drawn[0]) for d in drawn)
    base_seven = results["base (before tuning)"]["seven_diversity"]
    rows = [[name, r["fidelity"], r["drift"], r["sks_read_as_seven"], r["diversity"], r["other_digits_accuracy"]]
            for name, r in results.items()]
    rows.append(["the four instances", 1.0, "-", "-", own, "-"])
    zero, one = results["full, lambda=0"], results["full, lambda=1"]
    notes = [f"base: text-mnist5k trained {base_steps} steps; each tuning {steps} steps from its EMA weights "
             f"({class_images} class images of {CLASS!r} drawn once by the base for lambda = 1); {n} samples a prompt "
             f"kind, DDIM {sample_steps} steps, no guidance",
             f"diversity: mean pairwise distance in the evaluator's features; the base's {CLASS!r} samples: "
             f"{base_seven:.3g}, the four instances: {own:.3g}",
             f"fidelity (sks with the bar): base {results['base (before tuning)']['fidelity']:.0%}, lambda = 0 "
             f"{zero['fidelity']:.0%}, lambda = 1 {one['fidelity']:.0%}",
             f"language drift (a plain seven with the bar): lambda = 0 {zero['drift']:.0%}, lambda = 1 "
             f"{one['drift']:.0%}: " + _verdict(results["base (before tuning)"], zero, one),
             f"other digits' text accuracy: lambda = 0 {zero['other_digits_accuracy']:.0%}, lambda = 1 "
             f"{one['other_digits_accuracy']:.0%}",
             f"the figure: the four instances, then a row per model: 8 {INSTANCE!r} | 8 {CLASS!r} samples"]
    data = {"budget": budget, "base_steps": base_steps, "steps": steps, "n": n, "sample_steps": sample_steps,
            "class_images": class_images, "rows": results, "instance_diversity": own, "same_class_images": same}

    def plot(path):
        pad = torch.full((16 - len(instances), *instances.shape[1:]), -1.0)
        image_grid(torch.cat([instances, pad, *grids]), path, nrow=16)
    return Report("dreambooth", f"DreamBooth on the crossbar sevens, lambda = 0 and 1, {steps} steps a tuning",
                  ["model", "fidelity", "drift", "sks read as 7", "diversity of sks", "other digits' accuracy"],
                  rows, notes, data, plot)
