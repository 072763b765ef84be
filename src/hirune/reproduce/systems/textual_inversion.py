"""Textual inversion (Gal et al. 2022, secs. 3-4 and fig. 5): a trained text-to-image model learns a
subject from a few images through one new word alone -- the placeholder <s*>'s embedding row,
everything else frozen -- so a subject ships as a few hundred bytes.  Beside it, on the same
images and steps: LoRA (rank 4 on q, k, v, proj) and DreamBooth (every weight, prior
preservation with lambda = 1 on class images the base draws for "a digit"), both prompted
"a sks digit" (DreamBooth's rare identifier).

Measured: a trained text run (the base) is taught one digit's instance images (`data.instances`:
digit:D, the first 5 train images of D; thick:D, the 5 with the most ink) with each method's
`hirune train` defaults (textual inversion lr 5e-3 from the initializer "digit", a word naming
no digit; LoRA lr 1e-3; DreamBooth lr 1e-4), batch 16.  Columns: the weights that train, the
bytes shipped (embedding.safetensors / adapter_model.safetensors / the network), the median
step time, and per prompt before and after training the share of n samples (DDIM, seed 0, no
guidance) the shipped evaluator reads as the instance's digit, and their mean ink.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report
from .bases import TINY_UNET, timed_tuning, train_base

INITIALIZER = "digit"
# budget -> (base preset, steps, overrides), instance, steps, batch, samples a prompt and stage, DDIM steps
SIZES = {
    "tiny": (("text-digits", 2, {"batch_size": 8, "model_config": TINY_UNET}), "thick:3", 2, 8, 10, 2),
    "small": (("text-digits", 600, {}), "digit:7", 150, 16, 100, 10),
    "full": (("text-mnist5k", 1000, {}), "digit:7", 500, 16, 200, 25),
}


def measure(run, prompt: str, digit: int, n: int, steps: int) -> tuple[dict, torch.Tensor]:
    """The share of n samples of `prompt` read as `digit`, and their mean ink."""
    from ...data.captions import ink_amount
    from ...inference.generate import generate
    from ...metrics.evaluator import features_and_logits, load_evaluator

    out, _ = generate(run, n, "ddim", steps, seed=0, prompt=prompt, progress=False)
    x = out.x.cpu().clamp(-1, 1)
    _, logits = features_and_logits(load_evaluator(run.data.name), x)
    return {"share": float((logits.argmax(1) == digit).double().mean()), "ink": float(ink_amount(x).mean())}, x


def tune(kind: str, base: Path, out: Path, steps: int, **settings) -> dict:
    """Train `kind` (textual-inversion | lora | dreambooth) from `base`, timing its steps."""
    from ...checkpoint import latest_checkpoint
    from ...models import lora
    from ...models.textual_inversion import EMBEDDING_FILE

    trainer, times = timed_tuning(kind, base, {"steps": steps, "ckpt_every": steps, "out": str(out), **settings})
    shipped = {"textual-inversion": out / EMBEDDING_FILE, "lora": out / "adapter" / lora.ADAPTER_WEIGHTS,
               "dreambooth": latest_checkpoint(out) / "model.safetensors"}[kind]
    return {"trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "file_bytes": shipped.stat().st_size, "ms_per_step": 1000 * statistics.median(times[1:] or times)}


def textual_inversion_note(budget: str) -> Report:
    from ...data import load_dataset
    from ...data.captions import ink_amount
    from ...data.instances import IDENTIFIER_CAPTION, instance_images
    from ...families import textual_inversion
    from ...models.textual_inversion import DEFAULT_PLACEHOLDER
    from ...training import load
    from ...viz import image_grid

    (preset, base_steps, overrides), instance, steps, batch, n, sample_steps = SIZES[budget]
    digit, prompt = int(instance.split(":")[1]), f"an image of {DEFAULT_PLACEHOLDER}"
    results, grids = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = train_base(preset, root / "base", base_steps, **overrides)
        split = load_dataset(load(base).data.name, "train")
        images = instance_images(instance, split.data, split.labels)
        grids.append(images)
        start = load(base)   # the placeholder at its initial value: the row before training
        textual_inversion.add_placeholder(start, DEFAULT_PLACEHOLDER, initializer=INITIALIZER)
        arms = {"textual inversion": ("textual-inversion", prompt, start, {"initializer": INITIALIZER}),
                "LoRA rank 4 (q, k, v, proj)": ("lora", IDENTIFIER_CAPTION, load(base),
                                                {"instance_prompt": IDENTIFIER_CAPTION, "prior_weight": 0.0}),
                "DreamBooth (every weight, lambda = 1)": ("dreambooth", IDENTIFIER_CAPTION, load(base),
                                                          {"instance_prompt": IDENTIFIER_CAPTION,
                                                           "class_prompt": "a digit", "sample_steps": sample_steps})}
        for i, (method, (kind, text, before_run, settings)) in enumerate(arms.items()):
            before, xb = measure(before_run, text, digit, n, sample_steps)
            row = {"prompt": text, **tune(kind, base, root / f"arm{i}", steps, instance=instance, batch_size=batch,
                                          **settings), "before": before}
            row["after"], xa = measure(load(root / f"arm{i}"), text, digit, n, sample_steps)
            results[method] = row
            grids += [xb[:16], xa[:16]]
    own_ink = float(ink_amount(images).mean())
    rows = [[method, r["prompt"], r["trainable"], r["file_bytes"], r["ms_per_step"], r["before"]["share"],
             r["after"]["share"], r["before"]["ink"], r["after"]["ink"]] for method, r in results.items()]
    ti = results["textual inversion"]
    notes = [f"base: {preset} trained {base_steps} steps, taught {instance} ({len(images)} images) for {steps} steps "
             f"at batch {batch}; {n} samples a cell (DDIM {sample_steps} steps, no guidance), read by the shipped "
             f"evaluator; the instance's own mean ink {own_ink:.3f}",
             f"textual inversion trains {ti['trainable']:,} numbers and ships {ti['file_bytes']:,} bytes; "
             + "; ".join(f"{m}: {r['trainable']:,} and {r['file_bytes']:,}" for m, r in results.items() if r is not ti),
             "read as the instance's digit, before -> after: "
             + "; ".join(f"{m} {r['before']['share']:.0%} -> {r['after']['share']:.0%}" for m, r in results.items()),
             "the figure: the instance images, then per method 16 samples before | 16 after"]
    data = {"budget": budget, "base": {"preset": preset, "steps": base_steps}, "instance": instance, "digit": digit,
            "steps": steps, "batch": batch, "n": n, "sample_steps": sample_steps, "rows": results,
            "instance_ink": own_ink}

    def plot(path):
        padded = [torch.cat([g, g.new_full((16 - len(g), *g.shape[1:]), -1.0)]) if len(g) < 16 else g for g in grids]
        image_grid(torch.cat(padded), path, nrow=16)
    columns = ["method", "prompt", "trainable", "file bytes", "ms / step", "read as the digit: before", "read after",
               "mean ink: before", "ink after"]
    return Report("textual-inversion", f"teaching {instance} in {steps} steps: one word's embedding against LoRA "
                                       "and DreamBooth", columns, rows, notes, data, plot)
