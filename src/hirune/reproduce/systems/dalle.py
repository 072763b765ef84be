"""DALL-E (Ramesh et al. 2021, secs. 2-3): images as tokens -- a VQ tokenizer's grid of codes --
drawn one by one by a causal transformer after the caption's BPE tokens.  The claims measured
here: the model draws the digit its caption names; classifier-free guidance on the logits
(logits_uncond + s (logits_cond - logits_uncond), the caption dropped 10% of the time in
training) buys the digit named at a cost in variety; and the model completes an image primed
with its top code rows (the paper's image-to-image use).

Measured: a VQ autoencoder run (the tokenizer) and a dalle run over its codes, trained with the
library's presets (vq-ae-digits / dalle-digits, or the mnist5k ones at the full budget); then
per guidance scale `run.evaluate` -- samples captioned "a handwritten <digit>" (digits in turn)
against the test split (the shipped evaluator's Frechet distance and class accuracy) and n
samples per caption phrasing, training and held-out (`evaluation.text`) -- and priming: the top
rows of codes of test digits kept, the rest drawn under the null caption, and the share of
completions the evaluator gives the real digit's class (beside the real digits' and their
tokenized reconstructions').
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .bases import train_base

# budget -> (dataset, tokenizer steps, dalle steps), guidance scales, samples vs test, samples a phrasing,
#           primed digits, primed code rows
SIZES = {
    "tiny": (("digits", 3, 3), (1.0, 3.0), 20, 10, 10, 2),
    "small": (("digits", 600, 700), (1.0, 1.5, 3.0), 300, 50, 100, 2),
    "full": (("mnist5k", 400, 1400), (1.0, 1.5, 2.0, 3.0), 500, 100, 200, 3),
}


def priming(run, count: int, rows: int, seed: int = 0) -> dict:
    """The first `rows` code rows of `count` test digits kept, the rest drawn under the null
    caption: the share of completions the evaluator gives the real digit's class."""
    from ...data import load_dataset
    from ...metrics.evaluator import features_and_logits, load_evaluator

    test = load_dataset(run.data.name, "test")
    x, labels = test.data[:count], test.labels[:count]
    out, _ = run.generate(count, prime=x, rows=rows, seed=seed, progress=False)
    net = load_evaluator(run.data.name)

    def kept(images):
        return float((features_and_logits(net, images)[1].argmax(1) == labels).double().mean())
    tokenized = run.image_tokenizer.decode(run.image_tokenizer.encode(x))
    return {"rows": rows, "grid_rows": run.grid[0], "images": count, "class_kept": kept(out.x),
            "real_accuracy": kept(x), "tokenized_accuracy": kept(tokenized), "completions": out.x[:16].cpu()}


def dalle_note(budget: str) -> Report:
    from ...training import load

    (dataset, tokenizer_steps, steps), scales, samples, n, primed, prime_rows = SIZES[budget]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_base(f"vq-ae-{dataset}", Path(tmp) / "tokenizer", tokenizer_steps)
        run = load(train_base(f"dalle-{dataset}", Path(tmp) / "dalle", steps, tokenizer=str(tokenizer)))
        scored = [run.evaluate(samples, text_accuracy=n, scale=s, seed=0) for s in scales]
        prime = priming(run, primed, prime_rows)
        grid = run.generate(20, prompts=[f"a handwritten {w}" for w in ("zero", "one", "two", "three", "four",
                                                                         "five", "six", "seven", "eight", "nine")] * 2,
                            scale=scales[-1], seed=0, progress=False)[0].x.cpu()
    params = sum(t.numel() for t in run.model.parameters())
    completions = prime.pop("completions")
    rows = [[s, m["train_phrasing_accuracy"], m["held_out_phrasing_accuracy"], m["frechet_distance"],
             m["class_accuracy"]] for s, m in zip(scales, scored)]
    real = scored[0]["frechet_real_vs_real"]
    first, last = scored[0], scored[-1]
    notes = [f"vq-ae-{dataset} trained {tokenizer_steps} steps (the tokenizer), dalle-{dataset} {steps} steps over its "
             f"codes ({params:,} weights); {samples} samples against the test split (real vs real "
             f"{real:.3g}), {n} a caption phrasing; temperature 1, no top-k",
             f"the digit named, training phrasings: {first['train_phrasing_accuracy']:.0%} unguided, "
             f"{last['train_phrasing_accuracy']:.0%} at s = {scales[-1]:g}; held-out phrasings "
             f"{first['held_out_phrasing_accuracy']:.0%} and {last['held_out_phrasing_accuracy']:.0%}",
             f"variety: Frechet distance {first['frechet_distance']:.3g} unguided, {last['frechet_distance']:.3g} at "
             f"s = {scales[-1]:g} (" + ("guidance costs variety here" if last["frechet_distance"] >
                                        first["frechet_distance"] else "no cost in variety at this budget") + ")",
             f"priming: the top {prime['rows']} of {prime['grid_rows']} code rows of {prime['images']} test digits "
             f"kept, the rest drawn: the class kept in {prime['class_kept']:.0%} (the evaluator on the real digits "
             f"{prime['real_accuracy']:.0%}, on their tokenized reconstructions {prime['tokenized_accuracy']:.0%})",
             f"the figure: s = {scales[-1]:g}, 'a handwritten zero' ... 'nine' twice; then 16 primed completions"]
    data = {"budget": budget, "dataset": dataset, "tokenizer_steps": tokenizer_steps, "steps": steps,
            "parameters": params, "samples": samples, "n": n, "scores": dict(zip(map(str, scales), scored)),
            "priming": prime}

    def plot(path):
        from ...viz import grid_picture

        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(11, 4))
        for key, label in (("train_phrasing_accuracy", "training phrasings"),
                           ("held_out_phrasing_accuracy", "held-out phrasings"), ("class_accuracy", "class accuracy")):
            ax.plot(scales, [m[key] for m in scored], marker="o", label=label)
        ax.set(xlabel="guidance scale s", ylabel="share read as the digit named", ylim=(0, 1))
        fd = ax.twinx()
        fd.plot(scales, [m["frechet_distance"] for m in scored], color="grey", ls="--", marker="s")
        fd.set_ylabel("Frechet distance (grey)")
        ax.legend(fontsize=8)
        pic.imshow(grid_picture(torch.cat([grid, completions]), 10), cmap="gray")
        pic.axis("off")
        save(fig, path)
    return Report("dalle", f"DALL-E on {dataset}: the digit named against the guidance scale, and priming",
                  ["scale", "training phrasings", "held-out phrasings", "Frechet distance", "class accuracy"],
                  rows, notes, data, plot)
