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

Reranking (sec. 2.5, the `dalle-rerank` note): N candidates per caption, the one a CLIP run finds
most similar to the caption kept (`inference.rerank`), for N = 1 (plain sampling), 4 and 16,
unguided and guided: the same dalle run's samples, with a clip run (clip-digits / clip-mnist5k)
trained beside it at the budget, scored as above (the digit named by phrasing; Frechet distance
and class accuracy of "a handwritten <digit>"), with the CLIP similarity of the kept images and
of all candidates to their caption.
"""

from __future__ import annotations

import tempfile
import time
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
# reranking: budget -> (clip steps, clip settings), candidates N, guidance scales, samples a phrasing, samples vs test
RERANK = {
    "tiny": ((3, {"batch_size": 32, "model_config": {"channels": 8, "embed_dim": 16, "text_dim": 32,
                                                     "text_depth": 1}}), (1, 4), (1.0, 3.0), 1, 10),
    "small": ((500, {}), (1, 4, 16), (1.0, 3.0), 20, 200),
    "full": ((500, {}), (1, 4, 16), (1.0, 3.0), 50, 500),   # the README's: clip-mnist5k at its preset steps
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


def train_dalle(dataset: str, tokenizer_steps: int, steps: int, folder: Path):
    """The VQ tokenizer, then the dalle run over its codes, trained into `folder`: the dalle run loaded."""
    from ...training import load

    tokenizer = train_base(f"vq-ae-{dataset}", folder / "tokenizer", tokenizer_steps)
    return load(train_base(f"dalle-{dataset}", folder / "dalle", steps, tokenizer=str(tokenizer)))


def dalle_note(budget: str) -> Report:
    (dataset, tokenizer_steps, steps), scales, samples, n, primed, prime_rows = SIZES[budget]
    with tempfile.TemporaryDirectory() as tmp:
        run = train_dalle(dataset, tokenizer_steps, steps, Path(tmp))
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


def caption_scores(scorer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The CLIP similarity of each image (N, C, H, W) to its own prompt: (N,)."""
    return (scorer.embed_image(images) * scorer.embed_text(list(prompts))).sum(1)


def reranked(run, scorer, scale: float, candidates: int, n: int, samples: int, seed: int = 0) -> dict:
    """One row: `candidates` samples per caption under guidance `scale`, the one `scorer` finds most
    similar to the caption kept (`inference.rerank`); n kept images per phrasing (`evaluation.text`)
    and `samples` of "a handwritten <digit>" against the test split; the mean CLIP similarity of
    the kept images and of every candidate to their caption."""
    from ...data.captions import caption
    from ...evaluation.quality import sample_quality
    from ...evaluation.text import text_accuracy
    from ...inference.rerank import sample_reranked

    drawn = {"kept": [], "candidates": []}

    def draw(prompts: list[str], k: int) -> torch.Tensor:
        def generate(words: list[str]) -> torch.Tensor:
            x = run.generate(len(words), seed=seed + k, prompts=words, scale=scale, progress=False)[0].x.cpu()
            drawn["candidates"].append(caption_scores(scorer, x, words))
            return x
        best = sample_reranked(generate, prompts, candidates, scorer)[0]
        drawn["kept"].append(caption_scores(scorer, best, prompts))
        return best

    start = time.perf_counter()
    labels = torch.arange(samples) % 10
    x = draw([caption(int(y)) for y in labels], 100)
    row = {"scale": scale, "candidates": candidates, **sample_quality(run.data.name, "image", x, labels),
           **text_accuracy(draw, run.data.name, n)}
    kept, every = torch.cat(drawn["kept"]), torch.cat(drawn["candidates"])
    return {**row, "images": len(kept), "candidates_drawn": len(every), "clip_score_kept": float(kept.mean()),
            "clip_score_candidates": float(every.mean()), "seconds": time.perf_counter() - start}


def dalle_rerank_note(budget: str) -> Report:
    from ...training import load

    (dataset, tokenizer_steps, steps), *_ = SIZES[budget]
    (clip_steps, clip_settings), ns, scales, n, samples = RERANK[budget]
    with tempfile.TemporaryDirectory() as tmp:
        run = train_dalle(dataset, tokenizer_steps, steps, Path(tmp))
        scorer = load(train_base(f"clip-{dataset}", Path(tmp) / "clip", clip_steps, **clip_settings))
        scored = [reranked(run, scorer, s, k, n, samples) for s in scales for k in ns]
    rows = [[r["scale"], r["candidates"], r["train_phrasing_accuracy"], r["held_out_phrasing_accuracy"],
             r["class_accuracy"], r["frechet_distance"], r["clip_score_kept"], r["seconds"]] for r in scored]
    by = {(r["scale"], r["candidates"]): r for r in scored}
    lo, hi, few, many = scales[0], scales[-1], ns[0], ns[-1]

    def rises(key, s):
        return by[s, many][key] > by[s, few][key]
    notes = [f"dalle-{dataset} ({tokenizer_steps} tokenizer steps, {steps} dalle steps) and clip-{dataset} "
             f"({clip_steps} steps) trained here; each row: {samples} images of 'a handwritten <digit>' against the "
             f"test split (real vs real {scored[0]['frechet_real_vs_real']:.3g}) and {n} per caption phrasing, each "
             "the best of N candidates by the CLIP run's similarity; the CLIP column: the kept images' mean "
             "similarity to their caption",
             f"the digit named, held-out phrasings: {by[lo, few]['held_out_phrasing_accuracy']:.0%} at N = {few} "
             f"and {by[lo, many]['held_out_phrasing_accuracy']:.0%} at N = {many} unguided, "
             f"{by[hi, few]['held_out_phrasing_accuracy']:.0%} and {by[hi, many]['held_out_phrasing_accuracy']:.0%} "
             f"at s = {hi:g}: " + ("reranking raises it, with and without guidance"
                                   if rises("held_out_phrasing_accuracy", lo) and rises("held_out_phrasing_accuracy",
                                                                                        hi)
                                   else "reranking does not raise it at every scale at this budget"),
             f"training phrasings {by[lo, few]['train_phrasing_accuracy']:.0%} -> "
             f"{by[lo, many]['train_phrasing_accuracy']:.0%} unguided, {by[hi, few]['train_phrasing_accuracy']:.0%} "
             f"-> {by[hi, many]['train_phrasing_accuracy']:.0%} at s = {hi:g}; variety: Frechet distance "
             f"{by[lo, few]['frechet_distance']:.3g} -> {by[lo, many]['frechet_distance']:.3g} unguided ("
             + ("the price of picking typical digits" if rises("frechet_distance", lo) else "no cost at this budget")
             + ")",
             f"CLIP similarity to the caption, unguided: kept {by[lo, many]['clip_score_kept']:.3f} at N = {many} "
             f"against {by[lo, many]['clip_score_candidates']:.3f} over all its candidates; sampling time "
             f"{by[lo, many]['seconds'] / max(by[lo, few]['seconds'], 1e-9):.1f} x that of N = {few}"]
    data = {"budget": budget, "dataset": dataset, "tokenizer_steps": tokenizer_steps, "steps": steps,
            "clip_steps": clip_steps, "n": n, "samples": samples, "rows": scored}

    def plot(path):
        plt = pyplot()
        fig, (ax, fd) = plt.subplots(1, 2, figsize=(10, 3.8))
        for i, s in enumerate(scales):
            for key, style, words in (("train_phrasing_accuracy", "-", "training"),
                                      ("held_out_phrasing_accuracy", "--", "held-out")):
                ax.plot(ns, [by[s, k][key] for k in ns], style, marker="o", color=f"C{i}",
                        label=f"s = {s:g}, {words} phrasings")
            fd.plot(ns, [by[s, k]["frechet_distance"] for k in ns], marker="s", color=f"C{i}", label=f"s = {s:g}")
        ax.set(xscale="log", xticks=list(ns), xticklabels=[str(k) for k in ns], xlabel="candidates N",
               ylabel="share drawn as the digit named", ylim=(0, 1))
        fd.set(xscale="log", xticks=list(ns), xticklabels=[str(k) for k in ns], xlabel="candidates N",
               ylabel="Frechet distance")
        ax.legend(fontsize=7)
        fd.legend(fontsize=7)
        save(fig, path)
    return Report("dalle-rerank", f"DALL-E on {dataset}: the best of N candidates by CLIP, with and without guidance",
                  ["scale", "N", "training phrasings", "held-out phrasings", "class accuracy", "Frechet distance",
                   "CLIP similarity (kept)", "seconds"], rows, notes, data, plot)
